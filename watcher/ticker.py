"""The ticker: fires the schedulers that are due, whatever the number of workers ticking.

Each tick reads what is due (due.lua), computes each one's next fire time here (the
schedule math is Python's: APScheduler triggers), and fires them with a compare-and-set on
their fire time (fire.lua), so a tick fires once however many tickers race for it.

A run overdue by more than its whole interval and AWAY_MS (the workers were stopped, not
merely busy) is not fired at once with all the others: it is put off to its next slot, which
the id's phase spreads over one interval (past CATCH_UP_WINDOW, to a time spread over that
window by the same hash), so a restart after downtime is no burst.
"""

from __future__ import annotations

from watcher.queue import DueScheduler, Fire, Queue
from watcher.repeat import Repeater
from watcher.schedule import phase_ms
from watcher.tally import Tally

__all__ = ["Ticker"]

IDLE_TICK = 0.1
"""Seconds between ticks when nothing is due sooner."""
MIN_TICK = 0.01
"""Seconds at least between ticks: firing in small batches costs more than the lateness."""
AWAY_MS = 5000
"""How late a run must be, besides later than its interval, to say the workers were away
rather than busy: under overload, runs a little late still fire (moving them would cost tick
work and checks, measured: -14 % at --processes 1 with 3,000 resources every 1 s)."""
CATCH_UP_WINDOW = 3600.0
"""Seconds at most over which overdue runs are spread: a resource checked daily is not put
off for up to another day after downtime."""


class Ticker:
    def __init__(
        self,
        queue: Queue,
        repeater: Repeater | None = None,
        *,
        batch: int = 500,
        tally: Tally | None = None,
    ):
        self.queue = queue
        self.repeater = repeater or Repeater()
        self.batch = batch
        self.tally = tally or Tally()

    async def run(self) -> None:
        """Tick until `stop()` (a ticker alone, without running jobs)."""
        await self.repeater.repeat(self.tick)

    def stop(self) -> None:
        self.repeater.stop()

    async def tick(self) -> float:
        """Fire what is due; returns the seconds to wait before the next tick."""
        due = await self.queue.due(self.batch)
        now = due.now_ms
        soonest = now + IDLE_TICK * 1000 if due.soonest_ms is None else due.soonest_ms
        fires = []
        for scheduler in due.schedulers:
            catch_up = catch_up_time(scheduler, now)
            if catch_up is not None:
                moved_to, stands_for = catch_up
                fires.append(
                    Fire(scheduler.id, scheduler.score_ms, moved_to, stands_for, run=False)
                )
                soonest = min(soonest, moved_to)
                self.tally.spread += 1
                continue
            schedule = scheduler.schedule
            slot = schedule.next_slot(scheduler.id, now, scheduler.slot_ms)
            fire_at = None if slot is None else schedule.fire_time(slot)
            if fire_at is not None:
                soonest = min(soonest, fire_at)
            fires.append(Fire(scheduler.id, scheduler.score_ms, fire_at, slot or 0))
        _, skipped = await self.queue.fire(fires)
        self.tally.skipped += skipped
        if len(fires) >= self.batch:
            return 0.0  # more are due
        return min(IDLE_TICK, max(MIN_TICK, (soonest - now) / 1000))


def catch_up_time(scheduler: DueScheduler, now_ms: int) -> tuple[int, int] | None:
    """When an interval scheduler that missed a whole interval (and AWAY_MS) runs instead of
    now, and the slot that run stands for: its next slot (the id's phase spreads them over
    the interval), or past CATCH_UP_WINDOW, a time spread over that window standing for that
    slot (so the slot itself is not run again right after). None when it is not that late,
    or is a cron (its times are the point), or its schedule has ended."""
    schedule = scheduler.schedule
    every = schedule.every_ms
    if every is None or now_ms - scheduler.score_ms <= max(every, AWAY_MS):
        return None
    slot = schedule.next_slot(scheduler.id, now_ms)
    if slot is None:
        return None
    window = min(every, round(CATCH_UP_WINDOW * 1000))
    if slot - now_ms < window:
        return schedule.fire_time(slot), slot
    return now_ms + phase_ms(scheduler.id, window), slot
