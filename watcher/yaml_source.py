"""Where things are in a YAML file: every key's and value's line and column, the
`${VAR}` expansion, and the errors that point back at them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]
"""Where a value sits in the document, e.g. ``("resources", 1, "every")``."""
Position = tuple[int, int]
"""A 1-based (line, column)."""

MAX_SHOWN_ISSUES = 20


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


def load_yaml(text: str, report: Report) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _Builder(loader, report).build(node, ())
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


class _Builder:
    """Builds plain data from composed YAML nodes, recording every key's and value's position.

    Keys are kept as written (``on:`` stays the string "on", not YAML 1.1's True).
    """

    def __init__(self, loader: yaml.SafeLoader, report: Report) -> None:
        self._loader = loader
        self._report = report
        self._active: set[int] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
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
            return self._mapping(node, path)
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

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in self._pairs(node, path):
            key = key_node.value
            self._report.map.keys[(*path, key)] = position(key_node.start_mark)
            result[key] = self.build(value_node, (*path, key))
        return result

    def _pairs(self, node: yaml.MappingNode, path: Path) -> list[tuple[yaml.Node, yaml.Node]]:
        """The mapping's pairs with ``<<`` merges expanded; later pairs override earlier ones."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        first_seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path))
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
                own.append((key_node, value_node))
        return merged + own

    def _merge_sources(self, node: yaml.Node, path: Path) -> list[tuple[yaml.Node, yaml.Node]]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        # With `<<: [*a, *b]`, keys of *a win over *b: apply the list in reverse.
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode) or id(source) in self._active:
                self._report.add_at(source.start_mark, path, "`<<` expects a mapping or a list")
                continue
            self._active.add(id(source))
            try:
                pairs.extend(self._pairs(source, path))
            finally:
                self._active.discard(id(source))
        return pairs


# ---------------------------------------------------------------------------- environment

_ENV_RE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|(\{))")
_ENV_REF_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def substitute(value: Any, path: Path, env: Mapping[str, str], report: Report) -> Any:
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

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        if match.group(3):
            problems.append("unterminated `${`; write $$ for a literal dollar sign")
            return match.group(0)
        reference = _ENV_REF_RE.fullmatch(match.group(2))
        if not reference:
            problems.append(
                f"invalid variable reference `{match.group(0)}`;"
                " expected ${NAME} or ${NAME:-default}"
            )
            return match.group(0)
        name, default = reference.groups()
        found = env.get(name)
        if found or (found is not None and default is None):
            return found
        if default is not None:
            return default
        problems.append(f"environment variable {name} is not set (write ${{{name}:-}} to allow it)")
        return match.group(0)

    result = _ENV_RE.sub(replace, text)
    for problem in problems:
        report.add(path, problem)
        report.env_failed.add(path)
    return result
