"""Declared check options (issue 13): each check says which options it reads, and the YAML's
``options`` are checked against them when it loads, with "did you mean"; through the
console script, a mistyped option or a bad filter exits 2 and leaves Redis as it was."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from checks import content, etag, status, tls
from watcher.check import CheckOptions, FetchOptions, declare_options, declared_options
from watcher.config import ConfigError, parse_config
from watcher.registry import add_plugin_dir, options_of

from .test_hostile_config import everything_in, watcher


def only_error(text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_config(text, env={})
    return str(refused.value)


def resource(check: str, options: str) -> str:
    return (
        f"resources:\n  - id: a\n    url: https://a.example/\n    check: {check}\n"
        f"    options: {options}\n"
    )


def test_built_in_checks_declare_their_options() -> None:
    declared = {
        name: set(model.model_fields)
        for name, model in {
            "etag": declared_options(etag.check),
            "status": declared_options(status.check),
            "content": declared_options(content.check),
            "tls": declared_options(tls.check),
        }.items()
        if model is not None
    }
    fetching = {"max_bytes", "max_redirects"}
    assert declared == {
        "etag": fetching | {"follow_redirects", "diff", "diff_max_bytes"},
        "status": fetching | {"follow_redirects"},
        "content": fetching | {"regex", "json_path", "follow_redirects", "diff_max_bytes"},
        "tls": {"warn_days", "verify", "ca_file"},
    }
    assert options_of("content") is declared_options(content.check)
    assert options_of("no-such-check") is None  # loading it reports that, not this


@pytest.mark.parametrize(
    ("check", "options", "message"),
    [
        ("content", "{regexx: foo}", "options.regexx: unknown option `regexx` for check"
         " `content` (did you mean `regex`?)"),
        ("etag", "{max_byte: 10}", "options.max_byte: unknown option `max_byte` for check"
         " `etag` (did you mean `max_bytes`?)"),
        ("tls", "{zzz: 1}", "options.zzz: unknown option `zzz` for check `tls`; expected one"
         " of: warn_days, verify, ca_file"),
        ("tls", "{warn_days: soon}", "options.warn_days: expected a whole number"),
        ("etag", "{max_bytes: 0}", "options.max_bytes: "),
        ("content", "{regex: '('}", "options.regex: invalid regex '('"),
        ("content", "{regex: a, json_path: b}", "options: options `regex` and `json_path`"
         " cannot be used together"),
        ("status", "{follow_redirects: maybe}", "options.follow_redirects: expected true or"
         " false"),
    ],
)  # fmt: skip
def test_options_are_checked_against_the_check(check: str, options: str, message: str) -> None:
    error = only_error(resource(check, options))
    assert error.startswith("watcher.yaml:5:") and 'resources[0] (id "a").' in error
    assert message in error


def test_good_options_pass_and_are_kept_as_written() -> None:
    (good,) = parse_config(resource("content", "{regex: 'v(\\d+)', diff_max_bytes: 100}")).resources
    assert good.options == {"regex": "v(\\d+)", "diff_max_bytes": 100}


def test_defaults_options_are_checked_in_each_resource() -> None:
    text = (
        "defaults:\n  options: {regexx: x}\n"
        "resources:\n  - id: a\n    url: https://a.example/\n    check: content\n"
    )
    error = only_error(text)
    assert "watcher.yaml:2:" in error and "did you mean `regex`?" in error
    assert "(set in defaults)" in error


PLUGIN = """
from pydantic import Field
from watcher.check import CheckResult, FetchOptions, declare_options

class PriceOptions(FetchOptions):
    currency: str = "EUR"
    min_move: float = Field(default=0.0, ge=0)

@declare_options(PriceOptions)
async def check(ctx):
    return CheckResult(False, {}, "ok")

async def anything_goes(ctx):
    return CheckResult(False, {}, "ok")
"""


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "optplugin13.py").write_text(PLUGIN)
    add_plugin_dir(tmp_path)
    yield tmp_path
    sys.modules.pop("optplugin13", None)


def test_a_plugin_declares_its_options_through_the_public_api(plugin_dir: Path) -> None:
    error = only_error(resource("optplugin13:check", "{curency: USD}"))
    assert "unknown option `curency` for check `optplugin13:check`" in error
    assert "did you mean `currency`?" in error
    assert "expected a number >= 0" in only_error(resource("optplugin13:check", "{min_move: -1}"))
    (ok,) = parse_config(resource("optplugin13:check", "{currency: USD}"), env={}).resources
    assert ok.options == {"currency": "USD"}
    # A check that declares nothing takes any options, as before.
    (free,) = parse_config(resource("optplugin13:anything_goes", "{x: 1}"), env={}).resources
    assert free.options == {"x": 1}


def test_declare_options_sets_the_attribute() -> None:
    class Mine(CheckOptions):
        level: int = 1

    @declare_options(Mine)
    async def mine(ctx: Any) -> Any: ...

    assert declared_options(mine) is Mine
    assert declared_options(lambda ctx: None) is None
    assert issubclass(FetchOptions, CheckOptions) and issubclass(Mine, BaseModel)


# ---------------------------------------------------------------------------- the CLI

BAD_EDITS = [
    ("    options: {regexx: foo}\n", 8, "options.regexx", "did you mean `regex`?"),
    ('    filters: [{css: "p[[["}]\n', 8, "filters[0]", "invalid CSS selector 'p[[['"),
]


@pytest.mark.parametrize(("edit", "line", "field", "message"), BAD_EDITS)
def test_a_bad_option_or_filter_exits_2_and_changes_nothing(
    tmp_path: Path,
    redis_url: str,
    queue_name: str,
    edit: str,
    line: int,
    field: str,
    message: str,
) -> None:
    head = f"redis: {redis_url}\nqueue: {queue_name}\nresources:\n"
    good = "  - id: shop\n    url: http://127.0.0.1:9/shop\n    check: content\n    every: 1h\n"
    config = tmp_path / "watcher.yaml"
    config.write_text(head + good)
    synced = watcher("sync", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    before = everything_in(redis_url, queue_name)

    config.write_text(head + good + edit)
    for command in (["sync"], ["sync", "--dry-run"]):
        done = watcher(*command, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"watcher.yaml:{line}:" in done.stderr
        assert f'resources[0] (id "shop").{field}:' in done.stderr and message in done.stderr
        assert "Traceback" not in done.stderr
    assert everything_in(redis_url, queue_name) == before
