"""Finding checks by entry point name or dotted path, and the errors when that fails."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import checks.content
import checks.etag
import checks.status
from watcher.registry import PluginError, available_checks, load_check

WriteModule = Callable[[str, str], None]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write importable modules into a temporary sys.path entry; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution whose entry points are broken."""
    dist = tmp_path / "fake_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[watcher.checks]\n"
        "broken-import = watcher_no_such_module:check\n"
        "missing-attr = checks.etag:no_such_attribute\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtin_checks_are_registered() -> None:
    assert {"etag", "status", "content"} <= set(available_checks())
    assert available_checks() == sorted(available_checks())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("etag", checks.etag.check),
        ("status", checks.status.check),
        ("content", checks.content.check),
    ],
)
def test_load_by_entry_point(name: str, expected: object) -> None:
    assert load_check(name) is expected


def test_load_by_dotted_path() -> None:
    assert load_check("checks.etag:check") is checks.etag.check
    assert load_check("checks.content:resolve") is checks.content.resolve


def test_unknown_name_lists_known_and_suggests() -> None:
    with pytest.raises(PluginError) as caught:
        load_check("etga", resource="homepage")
    message = str(caught.value)
    assert "'etga'" in message and "resource 'homepage'" in message
    assert "did you mean 'etag'?" in message
    assert "known checks: " in message and "content" in message and "status" in message


def test_unknown_name_without_a_close_match() -> None:
    with pytest.raises(PluginError, match="unknown check") as caught:
        load_check("zzzzzzzz")
    assert "did you mean" not in str(caught.value)


def test_missing_module() -> None:
    with pytest.raises(PluginError, match="cannot import 'watcher_nope_mod'") as caught:
        load_check("watcher_nope_mod:check", resource="r1")
    assert "ModuleNotFoundError" in str(caught.value)
    assert "resource 'r1'" in str(caught.value)


def test_module_that_fails_to_import(write_module: WriteModule) -> None:
    write_module("watcher_test_boom", 'raise RuntimeError("boom\\nand a second line")\n')
    with pytest.raises(PluginError) as caught:
        load_check("watcher_test_boom:check")
    assert str(caught.value).endswith("cannot import 'watcher_test_boom': RuntimeError: boom")


def test_missing_attribute() -> None:
    with pytest.raises(PluginError, match=r"'checks\.etag' has no attribute 'nope'"):
        load_check("checks.etag:nope")


def test_not_callable() -> None:
    with pytest.raises(PluginError, match="str object is not callable"):
        load_check("checks.etag:NO_VALIDATORS")


@pytest.mark.parametrize("path", [":check", "checks.etag:", ":"])
def test_malformed_dotted_path(path: str) -> None:
    with pytest.raises(PluginError, match=r"package\.module:name"):
        load_check(path)


def test_a_class_is_instantiated(write_module: WriteModule) -> None:
    write_module(
        "watcher_test_classy",
        """
        class Check:
            async def __call__(self, ctx):
                return None
        """,
    )
    loaded = load_check("watcher_test_classy:Check")
    assert type(loaded).__name__ == "Check"


def test_a_class_that_cannot_be_instantiated(write_module: WriteModule) -> None:
    write_module(
        "watcher_test_needy",
        """
        class Check:
            def __init__(self, required):
                pass
        """,
    )
    with pytest.raises(PluginError, match="cannot instantiate Check: TypeError"):
        load_check("watcher_test_needy:Check")


def test_entry_point_that_fails_to_import(fake_distribution: None) -> None:
    assert "broken-import" in available_checks()
    with pytest.raises(PluginError, match="cannot import entry point") as caught:
        load_check("broken-import", resource="r9")
    assert "ModuleNotFoundError" in str(caught.value)
    assert "resource 'r9'" in str(caught.value)


def test_entry_point_with_a_missing_attribute(fake_distribution: None) -> None:
    with pytest.raises(PluginError, match="no_such_attribute"):
        load_check("missing-attr")
