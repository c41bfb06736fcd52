"""A detected change: what the history stores and the notifiers send."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Change"]


@dataclass(frozen=True)
class Change:
    resource: str
    check: str
    url: str
    time: float
    """Unix time in seconds (Redis server time) when the change was detected."""
    old: dict[str, Any] = field(default_factory=dict)
    """What the check showed as before the change (`CheckResult.old`: the validators for
    ``etag``; by default the state before the run), secret header values masked."""
    new: dict[str, Any] = field(default_factory=dict)
    """What the check showed as after (`CheckResult.new`; by default the new state)."""
    status_code: int | None = None
    summary: str = ""
    details: str | None = None
    id: str | None = None
    """The entry id in the changes stream, once recorded."""
    event: str = "change"
    """change, or an event of the resource: down, recovered, stale, changing (again)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)
