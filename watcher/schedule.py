"""Schedule math: when a scheduler fires next, computed with APScheduler 3 triggers.

Slots are deterministic: an `every` schedule fires at ``anchor + k * every`` where the
anchor is the start time, or else a phase derived from the scheduler id (so that
10,000 schedulers created in the same second do not all fire in the same
millisecond, and two processes creating the same scheduler at once agree). A cron
schedule fires at its crontab's times in its time zone. Missed slots coalesce: the
next slot is the first one at or after "now" and after the previous slot.
Jitter is added to the slot (0 <= jitter < every), never accumulated.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger


class ScheduleError(ValueError):
    """A schedule that cannot work: raised before anything is written."""


MAX_EVERY = 365 * 86400.0
"""The longest `every`, in seconds: past a year a cron says it better, and far past it the
date arithmetic overflows."""


@dataclass(frozen=True)
class Schedule:
    every_ms: int | None = None
    cron: str | None = None
    tz: str = "UTC"
    jitter_ms: int = 0
    start_ms: int | None = None
    end_ms: int | None = None

    @classmethod
    def build(
        cls,
        *,
        every: float | None = None,
        cron: str | None = None,
        tz: str | None = None,
        jitter: float = 0.0,
        start: float | None = None,
        end: float | None = None,
    ) -> Schedule:
        """Validate and normalise; times in seconds (start/end: Unix time). Cached: a sync
        of a million resources builds the same few schedules a million times."""
        try:
            return _built(every, cron, tz, jitter, start, end)
        except TypeError:  # an unhashable argument: _build says what is wrong with it
            return cls._build(every, cron, tz, jitter, start, end)

    @classmethod
    def _build(
        cls,
        every: float | None,
        cron: str | None,
        tz: str | None,
        jitter: float,
        start: float | None,
        end: float | None,
    ) -> Schedule:
        if (every is None) == (cron is None):
            raise ScheduleError("give exactly one of `every` or `cron`")
        every_ms = None
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
                raise ScheduleError(f"`every` must be a positive number of seconds, got {every!r}")
            if every > MAX_EVERY:
                raise ScheduleError(
                    f"`every` must be at most {format_duration(MAX_EVERY)}"
                    f" (got {format_duration(every)}); use a cron for rarer runs"
                )
            every_ms = max(1, round(every * 1000))
        if not isinstance(jitter, int | float) or jitter < 0:
            raise ScheduleError(f"`jitter` must be >= 0 seconds, got {jitter!r}")
        jitter_ms = round(jitter * 1000)
        if every_ms is not None and jitter_ms >= every_ms:
            raise ScheduleError(
                f"`jitter` ({format_duration(jitter)}) must be shorter than `every`"
                f" ({format_duration(every_ms / 1000)})"
            )
        start_ms = None if start is None else round(start * 1000)
        end_ms = None if end is None else round(end * 1000)
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise ScheduleError("`end` must be after `start`")
        schedule = cls(every_ms, cron, tz or "UTC", jitter_ms, start_ms, end_ms)
        schedule.trigger("validate")  # raises ScheduleError for a bad crontab or time zone
        if schedule.cron is not None:
            gap_ms = cron_gap_ms(schedule.cron, schedule.tz)
            if gap_ms is None:
                raise ScheduleError(f"cron {schedule.cron!r} never fires: no date matches it")
            if jitter_ms >= gap_ms:
                raise ScheduleError(
                    f"`jitter` ({format_duration(jitter)}) must be shorter than the time"
                    f" between the cron's runs ({format_duration(gap_ms / 1000)})"
                )
        return schedule

    def encode(self) -> str:
        """The compact form stored in Redis; equal schedules encode equally."""
        return _encoded(self)

    def _encode(self) -> str:
        fields = {
            "every": self.every_ms,
            "cron": self.cron,
            "tz": self.tz if self.cron else None,
            "jitter": self.jitter_ms or None,
            "start": self.start_ms,
            "end": self.end_ms,
        }
        return json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> Schedule:
        return _decode(text)

    def describe(self) -> str:
        if self.cron:
            return f"cron {self.cron} ({self.tz})"
        assert self.every_ms is not None
        return f"every {format_duration(self.every_ms / 1000)}"

    def trigger(self, scheduler_id: str) -> BaseTrigger:
        return _trigger(self, scheduler_id)

    def next_slot(self, scheduler_id: str, now_ms: int, after_ms: int | None = None) -> int | None:
        """The first slot at or after `now_ms` and strictly after `after_ms`; None when ended."""
        at = now_ms if after_ms is None else max(now_ms, after_ms + 1)
        if self.cron is None:
            return self._next_interval_slot(scheduler_id, at)
        moment = datetime.fromtimestamp(at / 1000, UTC)
        fire: datetime | None = self.trigger(scheduler_id).get_next_fire_time(None, moment)
        if fire is None:
            return None
        slot = round(fire.timestamp() * 1000)
        if slot < at:  # float rounding in the trigger; step to the next slot
            fire = self.trigger(scheduler_id).get_next_fire_time(
                None, datetime.fromtimestamp((at + 1) / 1000, UTC)
            )
            if fire is None:
                return None
            slot = round(fire.timestamp() * 1000)
        if self.end_ms is not None and slot > self.end_ms:
            return None
        return slot

    def _next_interval_slot(self, scheduler_id: str, at: int) -> int | None:
        """The first slot at or after `at` of an interval schedule: the slots are
        `first + k * every`, first being the start or the id's phase (the same slots as
        APScheduler's IntervalTrigger, in integer ms: it is on every tick's hot path)."""
        assert self.every_ms is not None
        every = self.every_ms
        first = self.start_ms if self.start_ms is not None else phase_ms(scheduler_id, every)
        slot = first if at <= first else first + -(-(at - first) // every) * every
        if self.end_ms is not None and slot > self.end_ms:
            return None
        return slot

    def fire_time(self, slot_ms: int) -> int:
        """The slot plus this schedule's jitter: the time the run is due."""
        return slot_ms + (random.randrange(self.jitter_ms) if self.jitter_ms else 0)


def phase_ms(scheduler_id: str, every_ms: int) -> int:
    """A stable offset in [0, every) derived from the id: spreads schedulers over the interval."""
    return zlib.crc32(scheduler_id.encode()) % every_ms


@lru_cache(maxsize=4096)
def _decode(text: str) -> Schedule:
    raw = json.loads(text)
    return Schedule(
        every_ms=raw.get("every"),
        cron=raw.get("cron"),
        tz=raw.get("tz", "UTC"),
        jitter_ms=raw.get("jitter", 0),
        start_ms=raw.get("start"),
        end_ms=raw.get("end"),
    )


@lru_cache(maxsize=4096)
def cron_gap_ms(cron: str, tz: str, fires: int = 8) -> int | None:
    """The shortest time between the next few runs of a crontab (ms); None if it never
    fires (``0 0 30 2 *``: February has no 30th)."""
    trigger = Schedule(cron=cron, tz=tz).trigger("cron")
    moment = datetime.now(UTC)
    times: list[datetime] = []
    for _ in range(fires):
        fire: datetime | None = trigger.get_next_fire_time(None, moment)
        if fire is None:
            break
        times.append(fire)
        moment = fire + timedelta(seconds=1)
    if not times:
        return None
    gaps = [round((b - a).total_seconds() * 1000) for a, b in pairwise(times)]
    return min(gaps, default=round(MAX_EVERY * 1000))


@lru_cache(maxsize=65536)
def _trigger(schedule: Schedule, scheduler_id: str) -> BaseTrigger:
    try:
        zone = ZoneInfo(schedule.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {schedule.tz!r}") from None
    start = (
        None if schedule.start_ms is None else datetime.fromtimestamp(schedule.start_ms / 1000, UTC)
    )
    if schedule.cron is not None:
        fields = schedule.cron.split()
        if len(fields) != 5:
            raise ScheduleError(f"invalid cron {schedule.cron!r}: expected 5 fields")
        minute, hour, day, month, day_of_week = fields
        try:
            return CronTrigger(
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=day_of_week,
                timezone=zone,
                start_date=start,
            )
        except ValueError as exc:
            raise ScheduleError(f"invalid cron {schedule.cron!r}: {exc}") from None
    assert schedule.every_ms is not None
    if start is None:
        start = datetime.fromtimestamp(phase_ms(scheduler_id, schedule.every_ms) / 1000, UTC)
    return IntervalTrigger(seconds=schedule.every_ms / 1000, start_date=start, timezone=UTC)


def format_duration(seconds: float) -> str:
    """30 -> '30s', 90 -> '1m30s', 0.2 -> '200ms'."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts)


_built = lru_cache(maxsize=1024, typed=True)(Schedule._build)
"""`Schedule.build`, cached (typed: `every=True` is refused, `every=1` is not)."""


@lru_cache(maxsize=1024)
def _encoded(schedule: Schedule) -> str:
    return schedule._encode()
