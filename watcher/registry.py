"""Find a check by name: an entry point in group ``watcher.checks``, or a dotted path.

A dotted path (``module:name``) is imported from the plugin directories first (the
directory of the config file: see `add_plugin_dir`), then from ``sys.path`` as usual.
`options_of` gives the options a check declares (`watcher.check.declared_options`), for the
config loader to validate a resource's ``options`` against.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from importlib.metadata import entry_points
from typing import TypeGuard

from pydantic import BaseModel

from watcher.check import ENTRY_POINT_GROUP, Check, declared_options


class PluginError(Exception):
    """A check could not be found or loaded."""


_plugin_dirs: list[str] = []


def add_plugin_dir(directory: str | os.PathLike[str]) -> None:
    """Make modules in ``directory`` importable by dotted path: it goes first on
    ``sys.path`` (as a script's own directory does) unless already there; adding it again
    does nothing."""
    path = os.path.abspath(directory)
    if path in _plugin_dirs:
        return
    _plugin_dirs.append(path)
    if path not in sys.path:
        sys.path.insert(0, path)


def plugin_dirs() -> tuple[str, ...]:
    """The directories `add_plugin_dir` added in this process, in that order (absolute)."""
    return tuple(_plugin_dirs)


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


_declared: dict[tuple[str, tuple[str, ...]], type[BaseModel] | None] = {}


def options_of(name: str) -> type[BaseModel] | None:
    """The options model the check called `name` declares; None when it declares none or
    cannot be loaded (loading it reports that). Cached per name and plugin directories:
    a file of many resources loads each check once."""
    key = (name, plugin_dirs())
    if key not in _declared:
        try:
            _declared[key] = declared_options(load_check(name))
        except PluginError:
            _declared[key] = None
    return _declared[key]


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
    except ModuleNotFoundError as exc:
        if exc.name and _is_within(module_name, exc.name):
            raise PluginError(
                f"{label}: cannot import {module_name!r}: ModuleNotFoundError: "
                + _not_found(exc.name)
            ) from None
        # the plugin was found; something it imports was not
        raise PluginError(f"{label}: cannot import {module_name!r}: {_one_line(exc)}") from exc
    except Exception as exc:
        raise PluginError(f"{label}: cannot import {module_name!r}: {_one_line(exc)}") from exc
    module = obj
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise PluginError(
                f"{label}: {module_name!r} has no attribute {attr_path!r} ({_origin(module)})"
            ) from None
    return obj


def _is_within(module_name: str, missing: str) -> bool:
    """Whether ``missing`` is ``module_name`` or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _not_found(missing: str) -> str:
    """Where a missing plugin module was looked for, and how to make it found."""
    parent, _, child = missing.rpartition(".")
    if parent:  # the package was found (perhaps another of the same name): say which
        return f"no module {child!r} in package {parent!r} ({_origin(sys.modules.get(parent))})"
    looked = "on PYTHONPATH and in installed packages"
    if _plugin_dirs:
        looked = f"in {', '.join(_plugin_dirs)} (the config file's directory), then {looked}"
    return (
        f"looked {looked}; put {missing}.py or {missing}/ next to the config file, "
        f"install it, or register an entry point in group {ENTRY_POINT_GROUP!r}"
    )


def _origin(module: object) -> str:
    """Where a module was imported from, for messages."""
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.origin and spec.has_location:
        return f"from {spec.origin}"
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    return f"from {', '.join(locations)}" if locations else "built in"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
