"""Sync: reconcile the YAML's resources into schedulers.

Creates what is new, updates what changed (the phase and the stored validators are kept
unless the URL, method or check changed: then the scope changes and the state resets),
removes what this config declared before and no longer does, and leaves schedulers that
others created alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.config import TEMPLATE_DEFAULTS, Config, ConfigError, ConfigIssue, ResourceConfig
from watcher.hosts import Budget
from watcher.inventory import owner_path, why_orphaned
from watcher.masking import mask_headers, mask_urls
from watcher.queue import Queue, SchedulerSpec, dump_json
from watcher.schedule import Schedule, ScheduleError, format_duration

FIELDS = ("name", "data", "spec", "scope", "owner", "overlap")


@dataclass
class Step:
    id: str
    action: str  # create | update | remove | conflict
    fields: list[str] = field(default_factory=list)
    spec: SchedulerSpec | None = None
    note: str = ""
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    """(field, old, new) of each changed field, secrets masked, long values cut."""

    def describe(self) -> str:
        if self.action != "update":
            return self.note or self.action
        told = "; ".join(f"{name}: {old} → {new}" for name, old, new in self.changes)
        return told + (f" ({self.note})" if self.note else "")


@dataclass
class Plan:
    steps: list[Step]
    unchanged: int
    budgets: dict[str, Budget] = field(default_factory=dict)
    budget_changes: list[tuple[str, str, str]] = field(default_factory=list)
    """(host, old, new) for each host budget the sync changes."""

    def of(self, action: str) -> list[Step]:
        return [s for s in self.steps if s.action == action]

    @property
    def empty(self) -> bool:
        changes = any(s.action in ("create", "update", "remove") for s in self.steps)
        return not changes and not self.budget_changes


def owner_of(config: Config) -> str:
    """Who declared a scheduler: this config file, by absolute path."""
    return "yaml:" + os.path.abspath(config.source)


def spec_for(resource: ResourceConfig, owner: str) -> SchedulerSpec:
    return SchedulerSpec(
        id=resource.id,
        name=resource.check,
        data={k: v for k, v in resource.template().items() if k != "id"},  # the scheduler's
        every=resource.every if resource.cron is None else None,
        cron=resource.cron,
        tz=resource.tz,
        jitter=resource.jitter,
        overlap=resource.overlap,
        owner=owner,
        scope=resource.identity(),
        immediately=True,  # a new resource gets its baseline now, not at its first slot
    )


def _schedule_text(spec: SchedulerSpec) -> str:
    return Schedule.build(every=spec.every, cron=spec.cron, tz=spec.tz, jitter=spec.jitter).encode()


def _changes(spec: SchedulerSpec, current: list[str | None]) -> list[tuple[str, str, str]]:
    """(field, old, new) for every field the sync would change, in field order."""
    name, data, schedule, scope, owner, overlap = current
    stored_as_written = (
        name == spec.name
        and data == dump_json("data", dict(spec.data))
        and schedule == _schedule_text(spec)
        and (scope or "") == spec.scope
        and (owner or "") == spec.owner
        and (overlap or "0") == str(int(spec.overlap))
    )
    if stored_as_written:  # what most resources of a sync are: told apart at a string compare
        return []
    # Both with every field (a template stored before fields at their default were left out
    # is the same template: it stays as it is).
    old: dict[str, Any] = {**TEMPLATE_DEFAULTS, **json.loads(data or "{}")}
    new: dict[str, Any] = {**TEMPLATE_DEFAULTS, **spec.data}
    old.pop("id", None)
    changes = {
        key: (_shown(key, old.get(key), old), _shown(key, new.get(key), new))
        for key in old.keys() | new.keys()
        if old.get(key) != new.get(key)
    }
    if name != spec.name:
        changes["check"] = (str(name), spec.name)
    if schedule != (new_schedule := _schedule_text(spec)):
        changes["schedule"] = (_schedule_words(schedule), _schedule_words(new_schedule))
    if (overlap or "0") != str(int(spec.overlap)):
        changes["overlap"] = (str(overlap == "1").lower(), str(spec.overlap).lower())
    if (owner or "") != spec.owner:
        changes["owner"] = (_owner_words(owner or ""), _owner_words(spec.owner))
    if (scope or "") != spec.scope and not changes.keys() & {"url", "method", "check"}:
        changes["scope"] = ("old state", "reset")
    return [(key, *changes[key]) for key in sorted(changes)]


SHOWN_MAX = 60
"""Characters of a value a plan shows: enough to tell values apart, one line each."""


def _shown(key: str, value: Any, data: Mapping[str, Any]) -> str:
    if value is None:
        return "(none)"
    if key == "headers" and isinstance(value, dict):
        value = mask_headers(value, data.get("secret_headers") or ())
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = mask_urls(text)
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 1] + "…"


def _schedule_words(encoded: str | None) -> str:
    if not encoded:
        return "(none)"
    try:
        schedule = Schedule.decode(encoded)
    except (ValueError, KeyError, TypeError):
        return encoded
    jitter = f" ± {format_duration(schedule.jitter_ms / 1000)}" if schedule.jitter_ms else ""
    return schedule.describe() + jitter


def _owner_words(owner: str) -> str:
    return owner_path(owner) or owner or "(none)"


def check_schedules(config: Config, now_ms: int) -> None:
    """ConfigError, at the file's line, for a schedule the queue would refuse: found before
    a plan is shown, not half-way through applying it. Each distinct schedule is tried once."""
    tried: dict[tuple[Any, ...], str | None] = {}
    issues: list[ConfigIssue] = []
    for index, resource in enumerate(config.resources):
        every = resource.every if resource.cron is None else None
        key = (every, resource.cron, resource.tz, resource.jitter)
        if key not in tried:
            tried[key] = _schedule_problem(*key, now_ms=now_ms)
        problem = tried[key]
        if problem and resource.enabled:
            field = "every" if resource.cron is None else "cron"
            issues += config.error(("resources", index, field), problem).errors
    if issues:
        raise ConfigError(issues, config.source)


def _schedule_problem(
    every: float | None, cron: str | None, tz: str, jitter: float, *, now_ms: int
) -> str | None:
    try:
        schedule = Schedule.build(every=every, cron=cron, tz=tz, jitter=jitter)
        if schedule.next_slot("probe", now_ms) is None:
            return "this schedule never fires"
    except (ScheduleError, OverflowError) as exc:
        return str(exc)
    return None


async def plan_sync(queue: Queue, config: Config, *, adopt: bool = False) -> Plan:
    """What a sync would do. A resource declared by another config file is left alone,
    unless that file no longer declares it here (gone, or now on another queue): then
    `adopt` makes this file its owner, keeping its state."""
    check_schedules(config, await queue.now_ms())
    owner = owner_of(config)
    declared = {r.id: spec_for(r, owner) for r in config.resources if r.enabled}
    existing = await queue.scheduler_fields(FIELDS)
    orphaned: dict[str, str | None] = {}
    steps: list[Step] = []
    unchanged = 0
    for id, spec in declared.items():
        current = existing.get(id)
        if current is None:
            steps.append(Step(id, "create", spec=spec))
            continue
        other = current[4]
        if other and other != owner:
            if other not in orphaned:
                orphaned[other] = why_orphaned(other, queue.name)
            if not (adopt and orphaned[other]):
                note = _conflict(other, orphaned[other])
                steps.append(Step(id, "conflict", spec=spec, note=note))
                continue
        changes = _changes(spec, current)
        if changes:
            steps.append(Step(id, "update", [c[0] for c in changes], spec, changes=changes))
        else:
            unchanged += 1
    for id, current in existing.items():
        if current[4] == owner and id not in declared:
            steps.append(Step(id, "remove"))
    budgets = config.budgets()
    return Plan(steps, unchanged, budgets, _budget_changes(await queue.budgets_encoded(), budgets))


def _budget_changes(
    stored: Mapping[str, str], budgets: Mapping[str, Budget]
) -> list[tuple[str, str, str]]:
    def shown(encoded: str | None) -> str:
        return Budget.decode(encoded).describe() if encoded else "(none)"

    changed = []
    for host in sorted(stored.keys() | budgets.keys()):
        new = budgets[host].encode() if host in budgets else None
        if stored.get(host) != new:
            changed.append((host, shown(stored.get(host)), shown(new)))
    return changed


def _conflict(owner: str, orphaned: str | None) -> str:
    declared_by = f"declared by {_owner_words(owner)}"
    if orphaned is None:
        return declared_by + " (left alone)"
    return f"{declared_by}, which {orphaned}: `watcher sync --adopt` makes this file its owner"


async def apply_plan(
    queue: Queue, plan: Plan, progress: Callable[[int], None] | None = None, chunk: int = 2000
) -> None:
    await queue.set_budgets(plan.budgets)
    upserts = [s.spec for s in plan.steps if s.action in ("create", "update") and s.spec]
    await queue.upsert_schedulers(upserts, progress)
    removals = [s.id for s in plan.of("remove")]
    for start in range(0, len(removals), chunk):
        await queue.remove_schedulers(removals[start : start + chunk])
        if progress:
            progress(len(removals[start : start + chunk]))


async def mark_synced(queue: Queue, config: Config) -> None:
    """Write the queue's sync marker after a sync (applied, or with nothing to do): workers
    that find it gone later know Redis lost the queue's data (watcher/keeper.py)."""
    declared = sum(1 for r in config.resources if r.enabled)
    await queue.mark_synced(os.path.abspath(config.source), declared)
