"""Schedule math: deterministic slots, coalescing, cron in time zones, jitter."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from watcher.schedule import Schedule, ScheduleError, format_duration, phase_ms

NOW = 1_800_000_000_000  # 2027-01-15


def test_every_slots_are_aligned_to_a_phase_derived_from_the_id() -> None:
    s = Schedule.build(every=10)
    first = s.next_slot("a", NOW)
    assert first is not None and NOW <= first < NOW + 10_000
    assert first % 10_000 == phase_ms("a", 10_000)
    assert s.next_slot("a", NOW + 3) == first  # a later "now" in the same slot agrees
    assert s.next_slot("a", first, first) == first + 10_000


def test_missed_slots_coalesce() -> None:
    s = Schedule.build(every=1)
    slot = s.next_slot("a", NOW)
    assert slot is not None
    late = s.next_slot("a", slot + 5_500, slot)
    assert late == slot + 6_000


def test_cron_in_time_zone_across_dst() -> None:
    s = Schedule.build(cron="30 2 * * *", tz="Europe/Paris")
    before_dst = int(datetime(2027, 3, 27, 12, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    slot = s.next_slot("a", before_dst)
    assert slot is not None
    local = datetime.fromtimestamp(slot / 1000, ZoneInfo("Europe/Paris"))
    assert (local.day, local.hour, local.minute) == (28, 3, 30)  # 02:30 does not exist that day
    after = s.next_slot("a", slot, slot)
    assert after is not None
    local = datetime.fromtimestamp(after / 1000, ZoneInfo("Europe/Paris"))
    assert (local.day, local.hour, local.minute, local.utcoffset().seconds) == (29, 2, 30, 7200)


def test_start_and_end() -> None:
    s = Schedule.build(every=60, start=NOW / 1000 + 30, end=NOW / 1000 + 100)
    assert s.next_slot("a", NOW) == NOW + 30_000
    assert s.next_slot("a", NOW, NOW + 30_000) == NOW + 90_000
    assert s.next_slot("a", NOW, NOW + 90_000) is None


def test_jitter_stays_within_bounds() -> None:
    s = Schedule.build(every=10, jitter=2)
    assert all(0 <= s.fire_time(NOW) - NOW < 2_000 for _ in range(200))


def test_encode_round_trip_and_equality() -> None:
    s = Schedule.build(cron="*/5 * * * *", tz="Asia/Tokyo", jitter=1)
    assert Schedule.decode(s.encode()) == s
    assert Schedule.build(every=60).encode() == Schedule.build(every=60.0).encode()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"every": 0},
        {"every": -1},
        {"every": True},
        {"every": 1, "cron": "* * * * *"},
        {"cron": "* * *"},
        {"cron": "* * * * *", "tz": "Nowhere/Land"},
        {"every": 5, "jitter": 5},
        {"every": 5, "jitter": -1},
        {"every": 5, "start": 10, "end": 5},
        {"every": 99999999999 * 86400.0},  # overflowed the date arithmetic
        {"cron": "0 0 30 2 *"},  # never fires
        {"cron": "*/5 * * * *", "jitter": 300},  # as long as the time between runs
    ],
)
def test_invalid(kwargs: dict) -> None:
    with pytest.raises(ScheduleError):
        Schedule.build(**kwargs)


def test_limits_of_what_works() -> None:
    assert Schedule.build(every=365 * 86400.0).next_slot("a", NOW) is not None
    assert Schedule.build(every=0.05).every_ms == 50  # the 1 s floor is the YAML's, not the queue's
    assert Schedule.build(cron="0 0 29 2 *").next_slot("a", NOW) is not None  # leap years
    assert Schedule.build(cron="*/5 * * * *", jitter=299).jitter_ms == 299_000


def test_format_duration() -> None:
    assert format_duration(0.2) == "200ms"
    assert format_duration(90) == "1m30s"
    assert format_duration(5400) == "1h30m"


def test_cron_respects_start() -> None:
    s = Schedule.build(cron="0 * * * *", start=NOW / 1000 + 3 * 3600)
    slot = s.next_slot("a", NOW)
    assert slot is not None and slot >= NOW + 3 * 3_600_000


def test_interval_slots_are_apschedulers_in_integer_ms() -> None:
    """The interval fast path gives the slots APScheduler's IntervalTrigger gives."""
    rng = random.Random(7)
    for _ in range(2000):
        every = rng.choice([1, 2, 7, 30, 60, 300, 3600, 86400]) * 1000
        start = rng.choice([None, rng.randrange(1_600_000_000_000, 1_800_000_000_000)])
        schedule = Schedule.build(every=every / 1000, start=None if start is None else start / 1000)
        id = f"r{rng.randrange(10**6)}"
        at = rng.randrange(1_600_000_000_000, 1_800_000_000_000)
        expected = schedule.trigger(id).get_next_fire_time(
            None, datetime.fromtimestamp(at / 1000, UTC)
        )
        slot = schedule.next_slot(id, at)
        assert expected is not None and slot is not None
        assert abs(slot - round(expected.timestamp() * 1000)) <= 1  # the trigger's float ms
