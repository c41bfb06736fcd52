"""Filters: a resource's ``filters:`` chain, checked when the YAML loads, applied at run time.

A chain is a list applied in order, each entry one filter::

    filters:
      - css: "#price"                 # the HTML of the elements a CSS selector matches
      - xpath: "//h1/text()"          # nodes as HTML, strings and numbers as text (lxml)
      - html2text                     # readable text from HTML (inscriptis)
      - json_path: "$.items[0].price" # JSONPath (jsonpath-ng), or a dotted path: items.0.price
      - jq: ".items | map(.price)"    # a jq program
      - regex: 'v(\\d+)'              # keep the matches, one a line (group 1 if it has groups)
      - ignore: '^Updated at'         # drop the lines matching a regex
      - strip                         # strip each line; drop blank lines
      - sort                          # sort the lines
      - {css: "#ad", optional: true}  # matching nothing is fine (the output is empty)

`parse_filter` checks one entry (an unknown name, a bad selector, regex, XPath or jq program)
and gives its canonical form, which is what the scheduler stores, under ``options.filters``
(`FILTERS_OPTION`), for the check to read with `chain_from_options`. `apply` runs a chain
over a body: a filter that matches nothing fails the run (`CheckFailed`) unless it says
``optional: true``, and every step's output is capped (`MAX_OUTPUT_CHARS`).

The libraries are imported when a filter needs them: a file without filters loads none.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from watcher.check import CheckFailed
from watcher.diffs import keep

__all__ = [
    "FILTERS_OPTION",
    "FILTER_NAMES",
    "MAX_OUTPUT_CHARS",
    "Filter",
    "Filtered",
    "NothingMatched",
    "apply",
    "chain_from_options",
    "decode",
    "parse_filter",
    "remembered",
    "resolve_dotted",
    "to_text",
]

FILTERS_OPTION = "filters"
"""The key of a resource's options under which its filters reach the check."""
MAX_OUTPUT_CHARS = 1024 * 1024
"""What one filter may output (characters): past it the run fails, as an oversized body."""
MAX_JQ_OUTPUTS = 10_000
MAX_SHOWN_VALUE_CHARS = 4096
"""A JSON selection up to this size (as text) is kept, to be shown as old → new."""
SELECTING = ("css", "xpath", "json_path", "jq", "regex", "ignore")
"""Filters that can match nothing (and so may say ``optional: true``)."""
TRANSFORMING = ("html2text", "strip", "sort")
"""Filters without an argument, which always have an output."""
FILTER_NAMES = (*SELECTING, *TRANSFORMING)


class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()


@dataclass(frozen=True)
class Filter:
    """One step of a chain: its name, its argument (None for html2text, strip, sort)."""

    name: str
    argument: str | None = None
    optional: bool = False

    def describe(self) -> str:
        return self.name if self.argument is None else f"{self.name} {self.argument!r}"

    def canonical(self) -> str | dict[str, Any]:
        """The form stored and compared: ``"html2text"``, ``{"css": "#p"}``, plus
        ``"optional": true`` when set."""
        if self.argument is None:
            return self.name
        entry: dict[str, Any] = {self.name: self.argument}
        if self.optional:
            entry["optional"] = True
        return entry


@dataclass(frozen=True)
class Filtered:
    """What a chain made of a body: text, and the JSON value when it ends in a JSON
    selection (json_path, jq) that no text filter followed."""

    text: str
    value: Any = NO_VALUE

    @property
    def is_json(self) -> bool:
        return self.value is not NO_VALUE


# ---------------------------------------------------------------------------- parsing


def parse_filter(entry: Any) -> Filter:
    """One entry of ``filters:``, checked; ValueError says what is wrong, in the YAML's words."""
    if isinstance(entry, str):
        return _bare(entry)
    if isinstance(entry, dict):
        return _mapping(entry)
    raise ValueError(
        f'expected a filter name or a mapping such as {{css: "#price"}} (got {entry!r})'
    )


def chain_from_options(options: Mapping[str, Any]) -> list[Filter]:
    """The chain stored in a resource's options (`FILTERS_OPTION`); empty when none."""
    chain = []
    for index, entry in enumerate(options.get(FILTERS_OPTION) or ()):
        try:
            chain.append(parse_filter(entry))
        except ValueError as exc:
            raise CheckFailed(f"filters[{index}]: {exc}") from None
    return chain


def _bare(name: str) -> Filter:
    known = _known_name(name)
    if known in SELECTING:
        raise ValueError(f'filter `{known}` needs an argument, e.g. `- {known}: "..."`')
    return Filter(known)


def _mapping(entry: dict[Any, Any]) -> Filter:
    names = [key for key in entry if key != "optional"]
    if len(names) != 1:
        shown = ", ".join(f"`{name}`" for name in names) or "none"
        raise ValueError(f"expected one filter per entry, plus `optional` (got {shown})")
    name = _known_name(str(names[0]))
    optional = entry.get("optional", False)
    if not isinstance(optional, bool):
        raise ValueError(f"`optional` expects true or false (got {optional!r})")
    argument = entry[names[0]]
    if name in TRANSFORMING:
        if argument is not None or "optional" in entry:
            raise ValueError(f"filter `{name}` takes no argument; write `- {name}`")
        return Filter(name)
    if not isinstance(argument, str) or not argument.strip():
        raise ValueError(f"filter `{name}` expects text (got {argument!r})")
    _VALIDATE[name](argument)
    return Filter(name, argument, optional)


def _known_name(name: str) -> str:
    if name in FILTER_NAMES:
        return name
    close = difflib.get_close_matches(name.lower(), FILTER_NAMES, n=1, cutoff=0.6)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    raise ValueError(f"unknown filter `{name}`{hint}; expected one of {', '.join(FILTER_NAMES)}")


def _check_css(selector: str) -> None:
    from selectolax.lexbor import LexborHTMLParser, SelectolaxError

    try:
        LexborHTMLParser("<p></p>").css(selector)
    except SelectolaxError:
        raise ValueError(f"invalid CSS selector {selector!r}") from None


def _check_xpath(expression: str) -> None:
    from lxml import etree

    try:
        etree.XPath(expression)
    except etree.XPathSyntaxError as exc:
        raise ValueError(f"invalid XPath {expression!r}: {exc}") from None


def _check_json_path(path: str) -> None:
    if path.startswith("$"):
        _json_path_expression(path)
    elif any(not part for part in path.split(".")):
        raise ValueError(
            f"invalid json_path {path!r}: expected e.g. $.items[0].price or items.0.price"
        )


def _check_jq(program: str) -> None:
    _jq_program(program)


def _check_regex(pattern: str) -> None:
    _regex(pattern)


_VALIDATE: dict[str, Callable[[str], None]] = {
    "css": _check_css,
    "xpath": _check_xpath,
    "json_path": _check_json_path,
    "jq": _check_jq,
    "regex": _check_regex,
    "ignore": _check_regex,
}


@lru_cache(maxsize=1024)
def _json_path_expression(path: str) -> Any:
    from jsonpath_ng.exceptions import JSONPathError
    from jsonpath_ng.ext.parser import parse

    try:
        return parse(path)
    except (JSONPathError, Exception) as exc:  # the parser raises plain Exceptions too
        raise ValueError(f"invalid json_path {path!r}: {_first_line(exc)}") from None


@lru_cache(maxsize=1024)
def _jq_program(program: str) -> Any:
    import jq

    try:
        return jq.compile(program)
    except ValueError as exc:
        raise ValueError(f"invalid jq program {program!r}: {_first_line(exc)}") from None


def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


# ---------------------------------------------------------------------------- applying


class NothingMatched(CheckFailed):
    """A filter matched nothing; the reason says what was looked for, where it helps."""


def apply(chain: Iterable[Filter], text: str) -> Filtered:
    """Run `chain` over `text` (a decoded body); CheckFailed for a filter that matched
    nothing (unless optional), an input it cannot read, or an output over the cap."""
    current = Filtered(text)
    for step in chain:
        try:
            current = _STEPS[step.name](step, current)
        except NothingMatched as missed:
            if not step.optional:
                detail = missed.reason or "matched nothing"
                raise CheckFailed(f"filter {step.describe()}: {detail}") from None
            current = current if step.name == "ignore" else Filtered("")
        if len(current.text) > MAX_OUTPUT_CHARS:
            raise CheckFailed(
                f"filter {step.describe()}: its output is over the"
                f" {MAX_OUTPUT_CHARS:,}-character cap"
            )
    return current


def remembered(filtered: Filtered, keep_bytes: int) -> dict[str, Any]:
    """What a check keeps of a filtered body for the next run's diff: its text, cut to
    `keep_bytes`, and a JSON selection's value when it is small (shown as old → new)."""
    kept: dict[str, Any] = {"text": keep(filtered.text, keep_bytes)}
    if filtered.is_json and len(filtered.text) <= MAX_SHOWN_VALUE_CHARS:
        kept["value"] = filtered.value
    return kept


def decode(body: bytes, charset: str | None) -> str:
    """A body as text, in its declared charset (else UTF-8), undecodable bytes replaced."""
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def to_text(value: Any) -> str:
    """A JSON value as text: a string as it is, anything else as stable, indented JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _json_result(values: list[Any]) -> Filtered:
    """One value as itself; several as a list, whose text has one value after another."""
    if len(values) == 1:
        return Filtered(to_text(values[0]), values[0])
    return Filtered("\n".join(to_text(value) for value in values), values)


def _joined(pieces: Iterable[str], step: Filter) -> str:
    """The pieces one a line, refused as soon as they pass MAX_OUTPUT_CHARS: nested matches
    repeat their subtrees, so joining them all first could take memory by the square."""
    kept: list[str] = []
    size = 0
    for piece in pieces:
        size += len(piece) + 1
        if size > MAX_OUTPUT_CHARS:
            raise CheckFailed(
                f"filter {step.describe()}: its output is over the"
                f" {MAX_OUTPUT_CHARS:,}-character cap"
            )
        kept.append(piece)
    return "\n".join(kept)


def _run_css(step: Filter, current: Filtered) -> Filtered:
    from selectolax.lexbor import LexborHTMLParser

    nodes = LexborHTMLParser(current.text).css(str(step.argument))
    if not nodes:
        raise NothingMatched("")
    return Filtered(_joined((node.html or "" for node in nodes), step))


def _run_xpath(step: Filter, current: Filtered) -> Filtered:
    from lxml import etree, html

    if not current.text.strip():
        raise NothingMatched("the input is empty")
    parser = html.HTMLParser(encoding="utf-8", no_network=True)
    try:
        document = html.fromstring(current.text.encode(), parser=parser)
        found = etree.XPath(str(step.argument))(document)
    except (etree.ParserError, etree.XPathError, ValueError) as exc:
        raise CheckFailed(f"filter {step.describe()}: {_first_line(exc)}") from None
    items = found if isinstance(found, list) else [found]
    if not items:
        raise NothingMatched("")
    return Filtered(_joined((_xpath_text(item) for item in items), step))


def _xpath_text(item: Any) -> str:
    from lxml import etree, html

    if isinstance(item, etree._Element):
        return str(html.tostring(item, encoding="unicode", with_tail=False))
    if isinstance(item, float) and item.is_integer():
        return str(int(item))  # count() answers 3.0
    return str(item)


def _run_html2text(step: Filter, current: Filtered) -> Filtered:
    from inscriptis import get_text

    lines = [line.rstrip() for line in get_text(current.text).splitlines()]
    return Filtered("\n".join(lines).strip("\n"))


def _json_input(step: Filter, current: Filtered) -> Any:
    if current.is_json:
        return current.value
    try:
        return json.loads(current.text)
    except ValueError as exc:
        raise CheckFailed(f"filter {step.describe()}: the input is not JSON ({exc})") from None


def _run_json_path(step: Filter, current: Filtered) -> Filtered:
    path = str(step.argument)
    document = _json_input(step, current)
    if not path.startswith("$"):
        return _json_result([resolve_dotted(document, path)])
    values = [match.value for match in _json_path_expression(path).find(document)]
    if not values:
        raise NothingMatched("")
    return _json_result(values)


def resolve_dotted(data: Any, path: str) -> Any:
    """Follow a dotted path (``data.items.0.price``) through mappings (keys) and lists
    (indexes, negative ones too); NothingMatched names the first part that leads nowhere."""
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if (
            isinstance(data, list)
            and part.lstrip("-").isdigit()
            and -len(data) <= int(part) < len(data)
        ):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise NothingMatched(f"nothing at {'.'.join(parts[: depth + 1])!r}")
    return data


def _run_jq(step: Filter, current: Filtered) -> Filtered:
    program = _jq_program(str(step.argument))
    document = _json_input(step, current)
    values: list[Any] = []
    try:
        for value in program.input_value(document):
            values.append(value)
            if len(values) > MAX_JQ_OUTPUTS:
                raise CheckFailed(f"filter {step.describe()}: over {MAX_JQ_OUTPUTS:,} outputs")
    except ValueError as exc:
        raise CheckFailed(f"filter {step.describe()}: {_first_line(exc)}") from None
    if all(value is None for value in values):  # `.missing` is null: nothing was there
        raise NothingMatched("")
    return _json_result(values)


def _run_regex(step: Filter, current: Filtered) -> Filtered:
    compiled = _regex(str(step.argument))
    group = 1 if compiled.groups else 0
    matches = [match.group(group) or "" for match in compiled.finditer(current.text)]
    if not matches:
        raise NothingMatched("")
    return Filtered("\n".join(matches))


def _run_ignore(step: Filter, current: Filtered) -> Filtered:
    compiled = _regex(str(step.argument))
    lines = current.text.splitlines()
    kept = [line for line in lines if not compiled.search(line)]
    if len(kept) == len(lines):
        raise NothingMatched("no line matched")
    return Filtered("\n".join(kept))


def _run_strip(step: Filter, current: Filtered) -> Filtered:
    lines = (line.strip() for line in current.text.splitlines())
    return Filtered("\n".join(line for line in lines if line))


def _run_sort(step: Filter, current: Filtered) -> Filtered:
    return Filtered("\n".join(sorted(current.text.splitlines())))


_STEPS: dict[str, Callable[[Filter, Filtered], Filtered]] = {
    "css": _run_css,
    "xpath": _run_xpath,
    "html2text": _run_html2text,
    "json_path": _run_json_path,
    "jq": _run_jq,
    "regex": _run_regex,
    "ignore": _run_ignore,
    "strip": _run_strip,
    "sort": _run_sort,
}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
