"""Find a check by name: an entry point in group ``watcher.checks``, or a dotted path."""

from __future__ import annotations

import difflib
import importlib
import inspect
from importlib.metadata import entry_points
from typing import TypeGuard

from watcher.check import ENTRY_POINT_GROUP, Check


class PluginError(Exception):
    """A check could not be found or loaded."""


def available_checks() -> list[str]:
    """The names registered in the ``watcher.checks`` entry point group, sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_check(name: str, *, resource: str | None = None) -> Check:
    """The check called ``name``: ``package.module:attr``, or a registered entry point name.

    A class is instantiated with no arguments. ``resource`` only names the
    resource in error messages.
    """
    label = f"check {name!r}" + (f" (resource {resource!r})" if resource else "")
    obj = _load_dotted(name, label) if ":" in name else _load_entry_point(name, label)
    if inspect.isclass(obj):
        cls = obj
        try:
            obj = cls()
        except Exception as exc:
            raise PluginError(
                f"{label}: cannot instantiate {cls.__name__}: {_one_line(exc)}"
            ) from exc
    if not _is_check(obj):
        raise PluginError(f"{label}: {type(obj).__name__} object is not callable")
    return obj


def _is_check(obj: object) -> TypeGuard[Check]:
    # Being callable is all that can be known before a call; the signature is the plugin's word.
    return callable(obj)


def _load_entry_point(name: str, label: str) -> object:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = available_checks()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) or "none"
        raise PluginError(f"{label}: unknown check{hint} (known checks: {listing})")
    entry_point = next(iter(found))
    try:
        return entry_point.load()
    except AttributeError as exc:
        raise PluginError(f"{label}: entry point {entry_point.value!r}: {_one_line(exc)}") from exc
    except Exception as exc:
        raise PluginError(
            f"{label}: cannot import entry point {entry_point.value!r}: {_one_line(exc)}"
        ) from exc


def _load_dotted(path: str, label: str) -> object:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise PluginError(f"{label}: a dotted path must look like 'package.module:name'")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(f"{label}: cannot import {module_name!r}: {_one_line(exc)}") from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise PluginError(f"{label}: {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
