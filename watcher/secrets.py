"""Secrets stay ``${VAR}`` references in what is stored, and are expanded where used.

The grammar is the YAML's: ``${NAME}`` (must be set), ``${NAME:-default}`` (the default
when unset or empty), ``$$`` for a literal dollar sign. `watcher sync` stores the
secret header values and the URL's user info as written, references and all, and lists
them under ``from_env`` in the template data; the worker expands them from its own
environment when a run starts, so Redis never holds the credential itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FROM_ENV",
    "NAME_AND_DEFAULT",
    "REFERENCE",
    "URL_FIELD",
    "SecretUnavailable",
    "expand_stored",
    "has_reference",
    "has_user_info",
    "header_field",
    "lookup",
    "url_keeping_references",
    "with_references",
]

FROM_ENV = "from_env"
"""The template key listing the fields that hold references: "url", "headers.<name>"."""
URL_FIELD = "url"
_HEADER_PREFIX = "headers."

REFERENCE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|(\{))")
"""``$$`` (group 1), ``${...}`` (group 2: what is inside), or an unterminated ``${`` (group 3)."""
NAME_AND_DEFAULT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def header_field(name: str) -> str:
    return _HEADER_PREFIX + name


def lookup(name: str, default: str | None, env: Mapping[str, str]) -> str | None:
    """The value of ``${name}`` or ``${name:-default}``; None when it must be set and is not."""
    found = env.get(name)
    if found or (found is not None and default is None):
        return found
    return default


@dataclass(frozen=True)
class _Piece:
    raw: str
    value: str
    reference: bool = False
    unset: str | None = None
    """The name of a variable that must be set and is not."""


def _pieces(text: str, env: Mapping[str, str]) -> list[_Piece]:
    """`text` cut into literal text and references, each with its expansion (an unset or
    malformed reference expands to itself: the loader reports those)."""
    pieces: list[_Piece] = []
    position = 0
    for match in REFERENCE.finditer(text):
        if match.start() > position:
            literal = text[position : match.start()]
            pieces.append(_Piece(literal, literal))
        position = match.end()
        whole = match.group(0)
        reference = NAME_AND_DEFAULT.fullmatch(match.group(2) or "")
        if match.group(1):
            pieces.append(_Piece(whole, "$"))
        elif match.group(2) is not None and reference:
            name, default = reference.groups()
            value = lookup(name, default, env)
            unset = name if value is None else None
            pieces.append(_Piece(whole, whole if value is None else value, True, unset))
        else:
            pieces.append(_Piece(whole, whole))
    if position < len(text):
        pieces.append(_Piece(text[position:], text[position:]))
    return pieces


def has_reference(text: str) -> bool:
    return any(piece.reference for piece in _pieces(text, {}))


def _user_info_span(url: str) -> tuple[int, int] | None:
    """Where the user info (``user:password``) of `url` is, as urllib splits it."""
    scheme_end = url.find("://")
    if scheme_end < 0 or "@" not in url:
        return None
    start = scheme_end + 3
    ends = [found for found in (url.find(c, start) for c in "/?#") if found >= 0]
    at = url.rfind("@", start, min(ends, default=len(url)))
    return None if at < 0 else (start, at)


def has_user_info(url: str) -> bool:
    return _user_info_span(url) is not None


def url_keeping_references(raw: str, env: Mapping[str, str]) -> str | None:
    """The URL to store when its user info comes from references: those references kept,
    the rest expanded (a ``$`` written ``$$``, so that expanding it again gives it back).
    None when the user info holds no reference (there is nothing to keep)."""
    pieces = _pieces(raw, env)
    span = _user_info_span("".join(piece.value for piece in pieces))
    if span is None:
        return None
    start, end = span
    stored: list[str] = []
    kept = False
    offset = 0
    for piece in pieces:
        piece_end = offset + len(piece.value)
        empty_inside = piece_end == offset and start <= offset <= end
        inside = (offset < end and piece_end > start) or empty_inside
        if piece.reference and inside:
            stored.append(piece.raw)
            kept = True
        else:
            stored.append(piece.value.replace("$", "$$"))
        offset = piece_end
    return "".join(stored).strip() if kept else None


def with_references(data: dict[str, Any], kept: Mapping[str, str]) -> dict[str, Any]:
    """Template data with the `kept` fields ("url", "headers.<name>") stored as written, and
    listed under ``from_env``."""
    if not kept:
        return data
    headers = dict(data.get("headers") or {})
    for field, text in kept.items():
        if field == URL_FIELD:
            data["url"] = text
        elif field.startswith(_HEADER_PREFIX):
            headers[field[len(_HEADER_PREFIX) :]] = text
    data["headers"] = headers
    data[FROM_ENV] = sorted(kept)
    return data


class SecretUnavailable(Exception):
    """A stored reference cannot be expanded here; the message names the variable only."""


def _expand(text: str, field: str, env: Mapping[str, str]) -> str:
    expanded = []
    for piece in _pieces(text, env):
        if piece.unset:
            raise SecretUnavailable(
                f"environment variable {piece.unset} is not set on this worker"
                f" ({field} refers to it)"
            )
        expanded.append(piece.value)
    return "".join(expanded)


def expand_stored(
    url: str, headers: Mapping[str, str], fields: Iterable[str], env: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    """The URL and headers with the references of `fields` (a template's ``from_env``)
    expanded from `env`; a header that expands to nothing is not sent."""
    headers = dict(headers)
    for field in fields:
        if field == URL_FIELD:
            url = _expand(url, field, env).strip()
        elif field.startswith(_HEADER_PREFIX) and field[len(_HEADER_PREFIX) :] in headers:
            name = field[len(_HEADER_PREFIX) :]
            value = _expand(headers[name], field, env).strip()
            if any(char in value for char in "\r\n\0"):
                raise SecretUnavailable(f"{field} expands to a value with a line break")
            if value:
                headers[name] = value
            else:
                del headers[name]
    return url, headers
