"""A change's title and body, as the notifiers send them: rendered from Jinja2 templates in a
sandbox, with defaults that read as a sentence.

A notifier's ``title:`` and ``body:`` are checked when the configuration loads
(`template_problem`: syntax, unknown variables, attributes the sandbox refuses); at run time a
template that fails anyway (``{{ old.etag }}`` for a check whose `old` has no etag) is
replaced by the default one, with a warning, and what is rendered is capped in size.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from watcher.change import Change

__all__ = [
    "DEFAULT_BODY",
    "DEFAULT_TITLE",
    "FIELDS",
    "MAX_BODY",
    "MAX_TITLE",
    "ChangeTemplates",
    "Message",
    "describe",
    "fields",
    "template_problem",
]

log = logging.getLogger("watcher.notify")

FIELDS = (
    "resource",
    "url",
    "check",
    "summary",
    "old",
    "new",
    "status_code",
    "time",
    "diff",
    "details",
    "event",
)
"""The variables a template may use."""

# An event (down, recovered, stale, changing) reads "is down", "recovered", ...
_HAPPENED = (
    "{{ {'change': 'changed', 'down': 'is down', 'recovered': 'recovered',"
    " 'stale': 'is stale', 'changing': 'changes again'}.get(event, event) }}"
)
DEFAULT_TITLE = "watcher: {{ resource }} " + _HAPPENED
DEFAULT_BODY = (
    "{{ resource }} ({{ url }}) " + _HAPPENED + ' at {{ time.strftime("%Y-%m-%d %H:%M") }} UTC:'
    " {{ summary }}{% if diff %}\n\n{{ diff }}{% endif %}"
)
MAX_TITLE = 1024
MAX_BODY = 64 * 1024
"""Characters; a longer rendering is cut, with a note saying so."""
# Bounds on what `*` and `**` may build inside a template, so that `{{ "x" * 10**10 }}`
# fails at once instead of filling the memory before the size cap could apply.
_MAX_REPEATED = MAX_BODY * 4
_MAX_POWER_BITS = 4096


@dataclass(frozen=True)
class Message:
    title: str
    body: str


# ---------------------------------------------------------------------------- the fields


def describe(change: Change) -> str:
    """The change in a few words: its summary, else what differs in its validators."""
    if change.summary:
        return change.summary
    for key, label in (
        ("etag", "ETag"),
        ("last_modified", "Last-Modified"),
        ("content_hash", "content hash"),
    ):
        old, new = change.old.get(key), change.new.get(key)
        if old != new:
            if key == "content_hash":
                old, new = (str(v)[:12] if v else v for v in (old, new))
            return f"{label} {old or 'none'} → {new or 'none'}"
    return "content changed"


def fields(change: Change) -> dict[str, Any]:
    """What a template sees: `FIELDS`, from the change."""
    details = change.details or ""
    return {
        "resource": change.resource,
        "url": change.url,
        "check": change.check,
        "summary": describe(change),
        "old": dict(change.old),
        "new": dict(change.new),
        "status_code": change.status_code,
        "time": datetime.fromtimestamp(change.time, UTC),
        # A change keeps its diff (the content check's) in `details`.
        "diff": details,
        "details": details,
        "event": change.event,
    }


# ---------------------------------------------------------------------------- the environment


class _Sandbox(SandboxedEnvironment):
    """Jinja2's sandbox (no access to attributes that start with _, to unsafe methods),
    with what would build an enormous string or number refused before it is built: `*`,
    `**`, a `%` or a format() with a huge width, and padding methods asked for a huge width.
    (Its CPU is not bounded: nested loops over ranges take seconds; templates come from the
    configuration's author.)"""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
            return operator.mul(left, right)
        if op == "**":
            _check_power(left, right)
            return operator.pow(left, right)
        if op == "%":
            _check_width(left)
            return operator.mod(left, right)
        return super().call_binop(context, op, left, right)

    def call(
        __self,
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        padding = isinstance(getattr(__obj, "__self__", None), str) and __obj.__name__ in _PADDING
        if padding and any(_huge(value) for value in (*args, *kwargs.values())):
            raise SecurityError(f"a width over {_MAX_REPEATED} is refused")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, with the format string's widths checked first."""
        _check_width(getattr(value, "__self__", None))
        return super().wrap_str_format(value)


def _check_repeat(sequence: Any, times: Any) -> None:
    repeats = isinstance(sequence, str | list | tuple) and isinstance(times, int)
    if repeats and len(sequence) * times > _MAX_REPEATED:
        raise SecurityError(f"a repetition longer than {_MAX_REPEATED} is refused")


_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_WIDTH = re.compile(rf"\d{{{len(str(_MAX_REPEATED)) + 1},}}")
"""A run of digits longer than any width a template needs (in a % or format() spec)."""


def _huge(value: Any) -> bool:
    return isinstance(value, int) and value > _MAX_REPEATED


def _check_width(text: Any) -> None:
    if isinstance(text, str) and _WIDTH.search(text):
        raise SecurityError(f"a width over {_MAX_REPEATED} is refused")


def _check_power(base: Any, exponent: Any) -> None:
    integers = isinstance(base, int) and isinstance(exponent, int) and exponent > 0
    if integers and max(abs(base).bit_length(), 1) * exponent > _MAX_POWER_BITS:
        raise SecurityError(f"a power over {_MAX_POWER_BITS} bits is refused")


@cache
def _environment() -> _Sandbox:
    # Notifications are text, not HTML: nothing is escaped. An unknown name is an error, not "".
    return _Sandbox(autoescape=False, undefined=jinja2.StrictUndefined)


# ---------------------------------------------------------------------------- checking


def template_problem(source: str) -> str | None:
    """What is wrong with a template, or None: its syntax, a variable that is not one of
    `FIELDS`, or an attribute the sandbox would refuse (``__class__``)."""
    try:
        tree = _environment().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return f"template syntax error{_on_line(source, exc.lineno)}: {exc.message}"
    unknown = sorted(meta.find_undeclared_variables(tree) - set(FIELDS))
    if unknown:
        names = ", ".join(f"`{name}`" for name in unknown)
        first = _first_use(tree, unknown[0])
        return (
            f"unknown template variable{'s' * (len(unknown) > 1)} {names}"
            f"{_on_line(source, first)}; expected one of {', '.join(FIELDS)}"
        )
    unsafe = sorted(_private_names(tree))
    if unsafe:
        names = ", ".join(dict.fromkeys(f"`{name}`" for name, _ in unsafe))
        line = min(line for _, line in unsafe)
        return f"template uses {names}{_on_line(source, line)}, which the sandbox refuses"
    return None


def _on_line(source: str, line: int | None) -> str:
    """The words " on line N", for a template of several lines."""
    return f" on line {line}" if line and "\n" in source.strip() else ""


def _first_use(tree: nodes.Template, name: str) -> int | None:
    lines = [node.lineno for node in tree.find_all(nodes.Name) if node.name == name]
    return min(lines, default=None)


def _private_names(tree: nodes.Template) -> Iterator[tuple[str, int]]:
    """Attributes and items starting with _ (``x.__class__``, ``x['__globals__']``)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        else:
            continue
        if isinstance(name, str) and name.startswith("_"):
            yield name, node.lineno


# ---------------------------------------------------------------------------- rendering


@cache
def _compiled(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _render_capped(source: str, values: dict[str, Any], limit: int) -> str:
    """The rendering, streamed, stopped once it is longer than `limit` characters."""
    parts: list[str] = []
    size = 0
    for part in _compiled(source).generate(values):
        parts.append(part)
        size += len(part)
        if size > limit:
            return _cut("".join(parts), limit)
    return "".join(parts)


def _cut(text: str, limit: int) -> str:
    note = f"\n[… cut: longer than {limit:,} characters]" if limit >= 1024 else "…"
    return text[: limit - len(note)] + note


class ChangeTemplates:
    """A notifier's title and body templates (None: the defaults), rendered for a change."""

    def __init__(
        self, title: str | None = None, body: str | None = None, *, notifier: str = ""
    ) -> None:
        for source in (title, body):
            if source is not None and (problem := template_problem(source)):
                raise ValueError(f"notifier {notifier!r}: {problem}")
        self.notifier = notifier
        self.title_source = title
        self.body_source = body

    @property
    def custom_body(self) -> bool:
        return self.body_source is not None

    def render(self, change: Change) -> Message:
        values = fields(change)
        return Message(
            title=self._render("title", change, values),
            body=self._render("body", change, values),
        )

    def _render(self, part: str, change: Change, values: dict[str, Any]) -> str:
        source, default, limit = self._part(part)
        if source is not None:
            try:
                return _render_capped(source, values, limit)
            except Exception as exc:  # whatever it is, the default still goes out
                log.warning(
                    "notifier %r: its %s template failed for resource %r (%s); sent the"
                    " default %s instead",
                    self.notifier,
                    part,
                    change.resource,
                    _error_text(exc),
                    part,
                )
        return _render_capped(default, values, limit)

    def _part(self, part: str) -> tuple[str | None, str, int]:
        if part == "title":
            return self.title_source, DEFAULT_TITLE, MAX_TITLE
        return self.body_source, DEFAULT_BODY, MAX_BODY


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
