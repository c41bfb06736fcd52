"""Where things are in a YAML file: every key's and value's line and column, the
`${VAR}` expansion, and the errors that point back at them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from watcher.limits import (
    BYTES_VARIABLE,
    NODES_VARIABLE,
    STRING_VARIABLE,
    Limits,
    format_size,
)
from watcher.secrets import NAME_AND_DEFAULT, REFERENCE, lookup

Path = tuple[str | int, ...]
"""Where a value sits in the document, e.g. ``("resources", 1, "every")``."""
Position = tuple[int, int]
"""A 1-based (line, column)."""

MAX_SHOWN_ISSUES = 20
MAX_DEPTH = 64
"""How deeply mappings and lists may nest; a configuration needs a handful of levels."""


# ---------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in the configuration, with where it is."""

    file: str
    line: int | None
    column: int | None
    path: str
    """The field, e.g. ``resources[1] (id "docs").every``; empty for the whole file."""
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem found, in file order.

    A plain message is accepted too: ``ConfigError("no resources", source="watcher.yaml")``.
    """

    def __init__(self, errors: Iterable[ConfigIssue] | str, source: str = "") -> None:
        if isinstance(errors, str):
            errors = [ConfigIssue(source, None, None, "", errors)]
        unique = dict.fromkeys(errors)
        self.errors: list[ConfigIssue] = sorted(
            unique, key=lambda issue: (issue.line or 0, issue.column or 0)
        )
        self.source = source
        super().__init__(self.errors, source)  # so that the error pickles

    def _render(self) -> str:
        lines = [str(issue) for issue in self.errors[:MAX_SHOWN_ISSUES]]
        if len(self.errors) > MAX_SHOWN_ISSUES:
            lines.append(f"... and {len(self.errors) - MAX_SHOWN_ISSUES} more")
        if len(self.errors) == 1:
            return lines[0]
        header = f"{self.source or 'configuration'}: {len(self.errors)} errors"
        return "\n".join([header, *lines])

    def __str__(self) -> str:
        return self._render()


def show(value: Any) -> str:
    """A short rendering of a value for messages."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- positions


def position(mark: yaml.Mark) -> Position:
    return mark.line + 1, mark.column + 1


_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class SourceMap:
    """Where each key and value of the document is, and the resource ids by index."""

    filename: str
    keys: dict[Path, Position] = field(default_factory=dict)
    values: dict[Path, Position] = field(default_factory=dict)
    ids: dict[int, str] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> Position | None:
        if key and path in self.keys:
            return self.keys[path]
        for depth in range(len(path), -1, -1):
            parent = path[:depth]
            found = self.values.get(parent) or self.keys.get(parent)
            if found:
                return found
        return None

    def describe(self, path: Path) -> str:
        text = ""
        for part in path:
            if isinstance(part, int):
                text += f"[{part}]"
                if text == f"resources[{part}]" and part in self.ids:
                    text += f" (id {show(self.ids[part])})"
            elif _PLAIN_KEY_RE.fullmatch(part):
                text += f".{part}" if text else part
            else:
                text += f"[{show(part)}]"
        return text

    def issue(
        self, path: Path, message: str, *, key: bool = False, at: Path | None = None
    ) -> ConfigIssue:
        line, column = self.locate(path if at is None else at, key=key) or (None, None)
        return ConfigIssue(self.filename, line, column, self.describe(path), message)


class Report:
    """The problems found so far; they are described once all resource ids are known."""

    def __init__(self, filename: str) -> None:
        self.map = SourceMap(filename)
        self.problems: list[tuple[Path, Position | None, str]] = []
        self.env_failed: set[Path] = set()
        self.written: dict[Path, str] = {}
        """Strings that hold ``${VAR}`` references, as written, by where they are."""
        self.notifiers: dict[str, Any] = {}

    def add(self, path: Path, message: str, *, key: bool = False, at: Path | None = None) -> None:
        position = self.map.locate(path if at is None else at, key=key)
        self.problems.append((path, position, message))

    def add_at(self, mark: yaml.Mark, path: Path, message: str) -> None:
        self.problems.append((path, position(mark), message))

    def error(self) -> ConfigError:
        issues = []
        for path, where, msg in self.problems:
            line, column = where if where is not None else (None, None)
            where_in_config = self.map.describe(path)
            issues.append(ConfigIssue(self.map.filename, line, column, where_in_config, msg))
        return ConfigError(issues, self.map.filename)

    def from_env_failure(self, path: Path) -> bool:
        return any(path[: len(failed)] == failed for failed in self.env_failed)


# ---------------------------------------------------------------------------- YAML


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


# libyaml's parser, where PyYAML was built with it, reads a large file about 20x faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, report: Report, limits: Limits | None = None) -> Any:
    """The document as plain data; ConfigError for bad YAML or a document beyond `limits`."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        builder = _Builder(loader, report)
        _Expansion(builder, limits or Limits()).measure(node)
        return builder.build(node, ())
    except _LimitExceeded as exc:
        issue = ConfigIssue(
            report.map.filename, *position(exc.mark), report.map.describe(exc.path), str(exc)
        )
        raise ConfigError([issue], report.map.filename) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_issue(report.map.filename, exc)], report.map.filename) from None
    except yaml.YAMLError as exc:
        issue = ConfigIssue(report.map.filename, None, None, "", f"YAML error: {exc}")
        raise ConfigError([issue], report.map.filename) from None
    finally:
        loader.dispose()


def _syntax_issue(filename: str, exc: yaml.MarkedYAMLError) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    line, column = position(mark) if mark else (None, None)
    message = f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"
    if exc.problem and exc.context and exc.context_mark:
        context_line, context_column = position(exc.context_mark)
        message += f" ({exc.context} at line {context_line}, column {context_column})"
    hint = _syntax_hint(exc)
    return ConfigIssue(filename, line, column, "", f"{message}; {hint}" if hint else message)


def _syntax_hint(exc: yaml.MarkedYAMLError) -> str | None:
    problem, context = exc.problem or "", exc.context or ""
    if "single document" in context:
        return "a configuration is one YAML document: remove the `---` line"
    if "alias" in context or "undefined alias" in problem:
        return 'a value starting with * must be quoted, e.g. cron: "*/5 * * * *"'
    if "'\\t'" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem or "expected <block end>" in problem:
        return "check the indentation, or quote a value that contains ': '"
    return None


def _yaml_problem(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        return exc.problem or exc.context or "invalid value"
    return str(exc)


@dataclass(frozen=True)
class _Pair:
    key: yaml.ScalarNode
    value: yaml.Node
    merged_at: yaml.Mark | None = None
    """Where the ``<<`` that brought this pair in is; None for the mapping's own pairs."""


class _Builder:
    """Builds plain data from composed YAML nodes, recording every key's and value's position.

    Keys are kept as written (``on:`` stays the string "on", not YAML 1.1's True). A node
    met again is an alias: it is built again (the data has no shared parts), but its
    positions are those of its anchor, already recorded.
    """

    def __init__(self, loader: yaml.SafeLoader, report: Report) -> None:
        self._loader = loader
        self._report = report
        self._active: set[int] = set()
        self._built: set[int] = set()
        self._pairs_of: dict[int, list[_Pair]] = {}
        self._merging: set[int] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        first = id(node) not in self._built
        if first:
            self._built.add(id(node))
            self._report.map.values[path] = position(node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self._report.add_at(node.start_mark, path, "recursive YAML alias")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                self._check_tag(node, _SEQ_TAG, path)
                return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
            assert isinstance(node, yaml.MappingNode)  # the composer makes no other node kind
            self._check_tag(node, _MAP_TAG, path)
            return self._mapping(node, path, record=first)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        try:
            return self._loader.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            self._report.add_at(node.start_mark, path, f"cannot read value: {_yaml_problem(exc)}")
            return None

    def _check_tag(self, node: yaml.Node, expected: str, path: Path) -> None:
        if node.tag != expected:
            self._report.add_at(node.start_mark, path, f"unsupported YAML tag {node.tag}")

    def _mapping(self, node: yaml.MappingNode, path: Path, *, record: bool) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for pair in self.pairs(node, path):
            key = pair.key.value
            if record:
                self._report.map.keys[(*path, key)] = position(pair.key.start_mark)
            result[key] = self.build(pair.value, (*path, key))
        return result

    def pairs(self, node: yaml.MappingNode, path: Path) -> list[_Pair]:
        """The mapping's pairs with ``<<`` merges expanded and later pairs overriding earlier
        ones (a key keeps its first place); worked out once per mapping."""
        found = self._pairs_of.get(id(node))
        if found is None:
            self._merging.add(id(node))
            try:
                found = self._own_and_merged_pairs(node, path)
            finally:
                self._merging.discard(id(node))
            self._pairs_of[id(node)] = found
        return found

    def _own_and_merged_pairs(self, node: yaml.MappingNode, path: Path) -> list[_Pair]:
        merged: list[_Pair] = []
        own: list[_Pair] = []
        first_seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged += self._merge_sources(value_node, key_node.start_mark, path)
            elif not isinstance(key_node, yaml.ScalarNode):
                self._report.add_at(key_node.start_mark, path, "a key must be a plain name")
            elif key_node.value in first_seen:
                first_line = first_seen[key_node.value].line + 1
                self._report.add_at(
                    key_node.start_mark,
                    (*path, key_node.value),
                    f"duplicate key `{key_node.value}` (first defined at line {first_line})",
                )
            else:
                first_seen[key_node.value] = key_node.start_mark
                own.append(_Pair(key_node, value_node))
        chosen: dict[str, _Pair] = {}
        for pair in merged + own:
            chosen[pair.key.value] = pair
        return list(chosen.values())

    def _merge_sources(self, node: yaml.Node, at: yaml.Mark, path: Path) -> list[_Pair]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        pairs: list[_Pair] = []
        # With `<<: [*a, *b]`, keys of *a win over *b: apply the list in reverse.
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode) or id(source) in self._merging:
                self._report.add_at(source.start_mark, path, "`<<` expects a mapping or a list")
                continue
            pairs += [_Pair(p.key, p.value, at) for p in self.pairs(source, path)]
        return pairs


class _LimitExceeded(Exception):
    def __init__(self, message: str, mark: yaml.Mark, path: Path) -> None:
        super().__init__(message)
        self.mark = mark
        self.path = path


class _Expansion:
    """Measures, before anything is built, what aliases add to the document.

    Nodes are visited in document order, each once; a node met again is an alias, and
    its whole expansion (memoised) is charged at that place, so a "billion laughs" is
    stopped at the alias that crosses the limit, without expanding anything.
    """

    def __init__(self, builder: _Builder, limits: Limits) -> None:
        self._builder = builder
        self._limits = limits
        self._sizes: dict[int, tuple[int, int, int]] = {}
        """Per node visited: the values, characters and depth of its full expansion."""
        self._active: set[int] = set()
        self._added_values = 0
        self._added_text = 0

    def measure(self, root: yaml.Node) -> None:
        self._visit(root, (), root.start_mark)

    def _visit(self, node: yaml.Node, path: Path, site: yaml.Mark) -> tuple[int, int, int]:
        size = self._sizes.get(id(node))
        if size is not None:
            self._check_depth(len(path) + size[2], site, path)
            self._charge(size[0], size[1], site, path)
            return size
        if id(node) in self._active:  # a recursive alias: the builder reports it
            return 0, 0, 0
        self._check_depth(len(path), node.start_mark, path)
        self._active.add(id(node))
        try:
            size = self._size(node, path)
        finally:
            self._active.discard(id(node))
        self._sizes[id(node)] = size
        return size

    def _size(self, node: yaml.Node, path: Path) -> tuple[int, int, int]:
        if isinstance(node, yaml.ScalarNode):
            self._check_length(node, path)
            return 1, len(node.value), 0
        values, text, depth = 1, 0, 0
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                child_values, child_text, child_depth = self._visit(
                    child, (*path, i), node.start_mark
                )
                values, text = values + child_values, text + child_text
                depth = max(depth, child_depth + 1)
        elif isinstance(node, yaml.MappingNode):
            for pair in self._builder.pairs(node, path):
                key = pair.key.value
                self._check_length(pair.key, path)
                if pair.merged_at is not None:
                    self._charge(1, len(key), pair.merged_at, (*path, key))
                site = pair.merged_at or pair.key.start_mark
                child_values, child_text, child_depth = self._visit(pair.value, (*path, key), site)
                values, text = values + 1 + child_values, text + len(key) + child_text
                depth = max(depth, child_depth + 1)
        return values, text, depth

    def _check_depth(self, depth: int, site: yaml.Mark, path: Path) -> None:
        if depth > MAX_DEPTH:
            raise _LimitExceeded(
                f"mappings and lists nested deeper than {MAX_DEPTH} levels",
                site,
                path[:3],  # where the nesting starts: the whole path would fill the screen
            )

    def _charge(self, values: int, text: int, site: yaml.Mark, path: Path) -> None:
        self._added_values += values
        self._added_text += text
        limits = self._limits
        if self._added_values > limits.max_nodes:
            raise _LimitExceeded(
                f"YAML aliases expand the document by more than {limits.max_nodes:,} values"
                f" (the limit; {NODES_VARIABLE} raises it)",
                site,
                path,
            )
        if self._added_text > limits.max_bytes:
            raise _LimitExceeded(
                f"YAML aliases expand the document by more than {format_size(limits.max_bytes)}"
                f" of text (the file size limit; {BYTES_VARIABLE} raises it)",
                site,
                path,
            )

    def _check_length(self, node: yaml.ScalarNode, path: Path) -> None:
        if len(node.value) > self._limits.max_string:
            raise _LimitExceeded(
                f"a text of {len(node.value):,} characters; the limit is"
                f" {self._limits.max_string:,} ({STRING_VARIABLE} raises it)",
                node.start_mark,
                path,
            )


# ---------------------------------------------------------------------------- environment


def substitute(value: Any, path: Path, env: Mapping[str, str], report: Report) -> Any:
    """`value` with ``${VAR}`` references expanded; a string that had any is recorded, as
    written, in ``report.written``."""
    if isinstance(value, str):
        return _expand(value, path, env, report)
    if isinstance(value, dict):
        return {key: substitute(item, (*path, key), env, report) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, (*path, i), env, report) for i, item in enumerate(value)]
    return value


def _expand(text: str, path: Path, env: Mapping[str, str], report: Report) -> str:
    if "$" not in text:
        return text
    problems: list[str] = []
    references = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal references
        if match.group(1):
            return "$"
        if match.group(3):
            problems.append("unterminated `${`; write $$ for a literal dollar sign")
            return match.group(0)
        reference = NAME_AND_DEFAULT.fullmatch(match.group(2))
        if not reference:
            problems.append(
                f"invalid variable reference `{match.group(0)}`;"
                " expected ${NAME} or ${NAME:-default}"
            )
            return match.group(0)
        references += 1
        name, default = reference.groups()
        found = lookup(name, default, env)
        if found is not None:
            return found
        problems.append(f"environment variable {name} is not set (write ${{{name}:-}} to allow it)")
        return match.group(0)

    result = REFERENCE.sub(replace, text)
    if references:
        report.written[path] = text
    for problem in problems:
        report.add(path, problem)
        report.env_failed.add(path)
    return result
