"""Bulk work, such as loading and syncing a million resources, with Python's cyclic garbage
collector paused: every object such work creates stays alive until it ends, so each
collection would scan millions of live objects for nothing (12 s of a 31 s load of a
million-URL list, measured)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collector_paused"]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for the block (nested blocks leave it to the outer one)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
