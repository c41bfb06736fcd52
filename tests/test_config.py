"""watcher.yaml: loading, defaults, environment variables, and errors that point at the line."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import pytest

from watcher.check import Resource
from watcher.config import (
    CommandNotifier,
    ConfigError,
    ConsoleNotifier,
    ResourceConfig,
    WebhookNotifier,
    load_config,
    parse_config,
    parse_duration,
)

ROOT = Path(__file__).resolve().parent.parent
RESOURCE_A = "resources:\n  - id: a\n    url: https://a.example/\n"


def parse(text: str, env: dict[str, str] | None = None):
    return parse_config(textwrap.dedent(text), env=env or {})


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    """The message lines of the ConfigError that ``text`` must raise."""
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return [str(issue) for issue in caught.value.errors]


def only_error(text: str, env: dict[str, str] | None = None) -> str:
    found = errors(text, env)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("1h 30m", 5400.0),
        (" 45 ", 45.0),
        (90, 90.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "", "m", "-5s", "1y", "nan", True, None, 1e400])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*; expected e\.g\. 30s, 5m, 1h30m"):
        parse_duration(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- valid files


def test_defaults_are_merged_into_each_resource() -> None:
    config = parse(
        """
        queue: team.a
        defaults:
          every: 1m
          jitter: 5s
          timeout: 20s
          headers: {Accept: text/html, User-Agent: watcher}
          options: {max_bytes: 1000, follow_redirects: false}
          secret_headers: [X-Token]
        notifiers:
          hook: {type: webhook, url: "https://hooks.example/x"}
        resources:
          - id: a
            url: https://a.example/
          - id: b
            url: https://b.example/
            every: 30s
            headers: {accept: application/json, X-Token: t}
            options: {max_bytes: 5}
            secret_headers: [X-Other]
            notify: [hook, console]
          - id: c
            url: https://c.example/
            cron: "0 9 * * 1-5"
            tz: Europe/Paris
        """
    )
    assert config.queue == "team.a"
    assert config.redis is None
    assert config.source == "watcher.yaml"
    a, b, c = config.resources
    assert (a.every, a.cron, a.jitter, a.timeout, a.tz) == (60.0, None, 5.0, 20.0, "UTC")
    assert a.headers == {"Accept": "text/html", "User-Agent": "watcher"}
    assert a.notify == ["console"]
    assert (a.check, a.method, a.enabled, a.overlap) == ("etag", "GET", True, False)
    assert b.every == 30.0
    # Headers merge case-insensitively and the resource's value wins.
    assert b.headers == {"User-Agent": "watcher", "accept": "application/json", "X-Token": "t"}
    assert b.options == {"max_bytes": 5, "follow_redirects": False}
    assert b.secret_headers == ["X-Token", "X-Other"]
    assert b.masked_headers()["X-Token"] == "***"
    assert b.notify == ["hook", "console"]
    # A resource's cron replaces the default `every` instead of clashing with it.
    assert (c.every, c.cron, c.tz) == (None, "0 9 * * 1-5", "Europe/Paris")
    assert isinstance(config.notifiers["hook"], WebhookNotifier)
    assert isinstance(config.notifiers["console"], ConsoleNotifier)


def test_minimal_resource_gets_every_5m() -> None:
    (resource,) = parse("resources:\n  - {id: a, url: 'http://a.example'}\n").resources
    assert resource.every == 300.0
    assert resource.cron is None


def test_empty_file_is_an_empty_config() -> None:
    config = parse("")
    assert config.resources == []
    assert config.queue == "watcher"
    assert list(config.notifiers) == ["console"]


def test_notifier_definitions() -> None:
    config = parse(
        """
        notifiers:
          hook:
            type: webhook
            url: https://hooks.example/x
            headers: {Authorization: "Bearer ${TOKEN:-}"}
            timeout: 3s
            retries: 0
          run: {type: command, command: "notify-send 'watcher says'", timeout: 1m}
          list: {type: command, command: [echo, hi], env: [DISPLAY]}
          map: {type: command, command: [echo, hi], env: {MODE: quiet}}
        """
    )
    hook = config.notifiers["hook"]
    assert isinstance(hook, WebhookNotifier)
    assert (hook.timeout, hook.retries, hook.headers) == (3.0, 0, {"Authorization": "Bearer"})
    run = config.notifiers["run"]
    assert isinstance(run, CommandNotifier)
    assert (run.command, run.timeout) == (["notify-send", "watcher says"], 60.0)
    assert config.notifiers["list"].command == ["echo", "hi"]  # type: ignore[union-attr]
    assert config.notifiers["list"].env == ["DISPLAY"]  # type: ignore[union-attr]
    assert config.notifiers["map"].env == {"MODE": "quiet"}  # type: ignore[union-attr]
    problem = only_error("notifiers:\n  run: {type: command, command: [echo], env: [A=B]}\n")
    assert "2:" in problem and "env" in problem


def test_env_substitution_defaults_and_dollar_escape() -> None:
    config = parse(
        """
        redis: ${REDIS_URL}
        resources:
          - id: a
            url: https://${HOST}/path
            headers:
              Authorization: Bearer ${TOKEN}
              X-Price: $$5 and $${NOT_A_VAR}
              X-Optional: ${UNSET:-}
              X-Fallback: ${EMPTY:-fallback}
            check: content
            options: {regex: 'v(\\d+)$'}
        """,
        env={
            "REDIS_URL": "redis://r:6379/1",
            "HOST": "example.com",
            "TOKEN": "s3cret",
            "EMPTY": "",
        },
    )
    (resource,) = config.resources
    assert config.redis == "redis://r:6379/1"
    assert resource.url == "https://example.com/path"
    assert resource.headers == {
        "Authorization": "Bearer s3cret",
        "X-Price": "$5 and ${NOT_A_VAR}",
        "X-Fallback": "fallback",
    }
    assert resource.options == {"regex": "v(\\d+)$"}  # a lone $ is left alone


def test_yaml_anchors_and_merge_keys() -> None:
    config = parse(
        """
        resources:
          - &base
            id: a
            url: https://a.example/
            every: 2m
          - <<: *base
            id: b
        """
    )
    assert [(r.id, r.url, r.every) for r in config.resources] == [
        ("a", "https://a.example/", 120.0),
        ("b", "https://a.example/", 120.0),
    ]


def test_identity_changes_with_what_the_state_depends_on() -> None:
    base = ResourceConfig(id="a", url="https://a.example/", every="5m")
    assert base.identity() == ResourceConfig(id="a", url="https://a.example/").identity()
    assert base.identity() == base.model_copy(update={"timeout": 99.0}).identity()
    same = ResourceConfig(id="renamed", url="https://a.example/", timeout="1m", every="1h")
    assert same.identity() == base.identity()
    assert ResourceConfig(id="a", url="https://a.example/x").identity() != base.identity()
    assert ResourceConfig(id="a", url=base.url, method="HEAD").identity() != base.identity()
    assert ResourceConfig(id="a", url=base.url, check="status").identity() != base.identity()
    accept = {"Accept": "application/json"}
    assert ResourceConfig(id="a", url=base.url, headers=accept).identity() != base.identity()
    regex = {"regex": "v(\\d+)"}
    content = ResourceConfig(id="a", url=base.url, check="content")
    with_regex = ResourceConfig(id="a", url=base.url, check="content", options=regex)
    assert with_regex.identity() != content.identity()
    assert len(base.identity()) == 16


def test_template_is_json_serialisable_and_leaves_out_only_defaults() -> None:
    (resource,) = parse(
        """
        resources:
          - id: a
            url: https://a.example/
            method: post
            headers: {X-A: 1}
            options: {regex: "x+", nested: {list: [1, 2.5, true, null]}}
            check: mypkg.checks:price
            secret_headers: X-A
        """
    ).resources
    template = resource.template()
    assert json.loads(json.dumps(template)) == template
    assert template == {
        "id": "a",
        "url": "https://a.example/",
        "method": "POST",
        "headers": {"X-A": "1"},
        "options": {"regex": "x+", "nested": {"list": [1, 2.5, True, None]}},
        "check": "mypkg.checks:price",
        "secret_headers": ["X-A"],
    }  # timeout and notify at their defaults: left out
    assert Resource.from_template(template).timeout == 10.0


def test_sample_watcher_yaml_parses() -> None:
    config = load_config(ROOT / "watcher.yaml", env={})
    assert config.source == str(ROOT / "watcher.yaml")
    checks = {resource.check for resource in config.resources}
    assert {"etag", "status", "content"} <= checks
    assert any(resource.cron for resource in config.resources)
    assert any(isinstance(n, WebhookNotifier) for n in config.notifiers.values())
    assert len({resource.id for resource in config.resources}) == len(config.resources)


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("resources:\n  - {id: a, url: 'https://a.example/', every: 45s}\n")
    config = load_config(path, env={})
    assert config.source == str(path)
    assert config.resources[0].every == 45.0


# ---------------------------------------------------------------------------- errors


def test_bad_duration_names_file_line_column_field_and_id() -> None:
    text = """
        resources:
          - id: home
            url: https://a.example/
          - id: docs
            url: https://b.example/
            every: 5 minutes
        """
    assert only_error(text) == (
        'watcher.yaml:7:12: resources[1] (id "docs").every: invalid duration "5 minutes";'
        " expected e.g. 30s, 5m, 1h30m, 2d, 500ms or a number of seconds"
    )
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == only_error(text)  # one error: one line


def test_yaml_syntax_error_gives_line_and_column() -> None:
    message = only_error(
        """
        resources:
          - id: a
            url: [https://a.example/
        """
    )
    assert message.startswith("watcher.yaml:5:")
    assert "YAML syntax error" in message


def test_unquoted_star_cron_gets_a_hint() -> None:
    message = only_error("resources:\n  - id: a\n    cron: */5 * * * *\n")
    assert message.startswith("watcher.yaml:3:12: YAML syntax error")
    assert 'must be quoted, e.g. cron: "*/5 * * * *"' in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "resources:\n  - id: a\n    url: https://a.example/\n    evry: 5m\n",
            'watcher.yaml:4:5: resources[0] (id "a").evry: unknown key `evry`'
            " (did you mean `every`?)",
        ),
        (
            "resource:\n  - id: a\n",
            "watcher.yaml:1:1: resource: unknown key `resource` (did you mean `resources`?)",
        ),
        (
            "defaults:\n  timout: 3s\n",
            "watcher.yaml:2:3: defaults.timout: unknown key `timout` (did you mean `timeout`?)",
        ),
        (
            "notifiers:\n  h:\n    type: webhook\n    url: https://h.example/\n    retry: 2\n",
            "watcher.yaml:5:5: notifiers.h.retry: unknown key `retry` (did you mean `retries`?)",
        ),
    ],
)
def test_unknown_key_with_did_you_mean(text: str, expected: str) -> None:
    assert only_error(text) == expected


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    message = only_error("colour: blue\n")
    expected = "unknown key `colour`; expected one of: redis, queue, history_limit, hosts, metrics"
    assert expected in message


def test_duplicate_id_points_at_the_second_and_names_the_first() -> None:
    message = only_error(
        """
        resources:
          - id: docs
            url: https://a.example/
          - id: other
            url: https://b.example/
          - id: docs
            url: https://c.example/
        """
    )
    assert message == (
        'watcher.yaml:7:9: resources[2] (id "docs").id: duplicate id "docs"'
        " (first defined at line 3)"
    )


@pytest.mark.parametrize("every", ["0", "0s", "-5"])
def test_every_must_be_positive(every: str) -> None:
    message = only_error(f"{RESOURCE_A}    every: {every}\n")
    assert message.startswith('watcher.yaml:4:12: resources[0] (id "a").every: ')
    assert "greater than 0" in message


def test_every_has_a_floor_that_min_every_lowers() -> None:
    message = only_error(f"{RESOURCE_A}    every: 500ms\n")
    assert message.startswith('watcher.yaml:4:12: resources[0] (id "a").every: ')
    assert "floor of 1s" in message and "`min_every: 500ms`" in message
    (own,) = parse(f"{RESOURCE_A}    every: 500ms\n    min_every: 100ms\n").resources
    assert own.every == 0.5
    (inherited,) = parse(f"defaults:\n  min_every: 500ms\n{RESOURCE_A}    every: 500ms\n").resources
    assert inherited.every == 0.5
    assert "min_every" not in inherited.template()  # a YAML rule: nothing of it is stored


def test_jitter_from_defaults_must_fit_each_resource() -> None:
    message = only_error(f"defaults:\n  jitter: 20s\n{RESOURCE_A}    every: 10s\n")
    assert message.startswith('watcher.yaml:2:11: resources[0] (id "a").jitter: ')
    assert "shorter than `every` (10s) (set in defaults)" in message


def test_every_and_cron_together() -> None:
    message = only_error(
        "resources:\n  - id: a\n    url: https://a.example/\n    every: 5m\n    cron: '0 9 * * *'\n"
    )
    assert message.startswith('watcher.yaml:5:11: resources[0] (id "a").cron: ')
    assert "`every` and `cron` are both set" in message


def test_both_every_and_cron_in_defaults() -> None:
    message = only_error("defaults:\n  every: 5m\n  cron: '0 9 * * *'\n")
    assert message.startswith("watcher.yaml:3:9: defaults.cron: `every` and `cron` are both set")


@pytest.mark.parametrize("cron", ["0 9 * *", "0 25 * * *", "*/0 * * * *", "0 9 * * 1 2"])
def test_bad_cron(cron: str) -> None:
    message = only_error(f"{RESOURCE_A}    cron: '{cron}'\n")
    assert message.startswith('watcher.yaml:4:11: resources[0] (id "a").cron: invalid cron')
    assert "expected 5 fields" in message


def test_bad_time_zone_suggests_the_right_one() -> None:
    message = only_error(
        "resources:\n  - id: a\n    url: https://a.example/\n"
        "    cron: '0 9 * * *'\n    tz: europe/paris\n"
    )
    assert message.startswith('watcher.yaml:5:9: resources[0] (id "a").tz: unknown time zone')
    assert "(did you mean `Europe/Paris`?)" in message


def test_unknown_notifier() -> None:
    message = only_error(
        """
        notifiers:
          slack: {type: webhook, url: "https://hooks.example/s"}
        resources:
          - id: a
            url: https://a.example/
            notify: [console, slak]
        """
    )
    assert message.startswith('watcher.yaml:7:23: resources[0] (id "a").notify[1]: ')
    assert 'unknown notifier "slak" (did you mean `slack`?)' in message
    assert "defined: console, slack" in message


def test_unknown_notifier_type() -> None:
    message = only_error("notifiers:\n  h: {type: webhok, url: 'https://h.example/'}\n")
    assert message.startswith("watcher.yaml:2:13: notifiers.h.type: unknown notifier type")
    assert "(did you mean `webhook`?)" in message


def test_missing_env_var_names_variable_file_line_and_field() -> None:
    message = only_error(
        """
        resources:
          - id: api
            url: https://api.example/
            headers:
              Authorization: Bearer ${API_TOKEN}
        """
    )
    assert message.startswith(
        'watcher.yaml:6:22: resources[0] (id "api").headers.Authorization: '
        "environment variable API_TOKEN is not set"
    )


def test_missing_env_var_in_a_url_is_reported_once() -> None:
    message = only_error("resources:\n  - id: a\n    url: ${BASE}/x\n")
    assert "environment variable BASE is not set" in message


def test_load_config_uses_the_real_path_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("resources:\n  - id: a\n    url: ${NOPE_NOT_SET_ANYWHERE}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f'{path}:3:10: resources[0] (id "a").url: ')


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config("/nonexistent/nope.yaml")


@pytest.mark.parametrize("bad_id", ["has space", "{braces}", "", "x" * 129, "a\\nb"])
def test_bad_id_characters(bad_id: str) -> None:
    message = only_error(f'resources:\n  - id: "{bad_id}"\n    url: https://a.example/\n')
    assert message.startswith("watcher.yaml:2:9: resources[0]")
    assert ".id: invalid id" in message
    assert "no spaces or braces" in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://a.example/", "the scheme must be http or https"),
        ("a.example/page", "the scheme must be http or https"),
        ("https://", "it has no host"),
        ("https://a.example:99999/", "Port out of range"),
        ("https://a example/", "whitespace"),
    ],
)
def test_bad_url(url: str, reason: str) -> None:
    message = only_error(f"resources:\n  - id: a\n    url: '{url}'\n")
    assert message.startswith(f'watcher.yaml:3:10: resources[0] (id "a").url: invalid URL "{url}"')
    assert reason in message


def test_duplicate_yaml_key() -> None:
    message = only_error(
        "resources:\n  - id: a\n    url: https://a.example/\n    every: 5m\n    every: 6m\n"
    )
    assert message == (
        'watcher.yaml:5:5: resources[0] (id "a").every: duplicate key `every`'
        " (first defined at line 4)"
    )


def test_missing_required_keys_point_at_the_resource() -> None:
    message = only_error("resources:\n  - every: 5m\n    url: https://a.example/\n")
    assert message == "watcher.yaml:2:5: resources[0].id: missing required key `id`"


def test_a_bad_default_is_reported_once_not_per_resource() -> None:
    message = only_error(
        """
        defaults:
          timeout: soon
        resources:
          - {id: a, url: "https://a.example/"}
          - {id: b, url: "https://b.example/"}
        """
    )
    assert message.startswith('watcher.yaml:3:12: defaults.timeout: invalid duration "soon"')


def test_id_and_url_cannot_be_defaults() -> None:
    message = only_error("defaults:\n  url: https://a.example/\n")
    assert message == "watcher.yaml:2:3: defaults.url: `url` cannot be set in defaults"


def test_secret_header_values_are_not_echoed() -> None:
    message = only_error(
        "resources:\n  - id: a\n    url: https://a.example/\n"
        "    headers: {Authorization: [s3cret-token]}\n"
    )
    assert "headers.Authorization" in message
    assert "s3cret" not in message


def test_multiple_errors_are_all_reported_in_file_order() -> None:
    found = errors(
        """
        queue: "no spaces"
        notifiers:
          h: {type: webhook, url: "ftp://h.example/", retries: -1}
        resources:
          - id: a
            url: https://a.example/
            every: 5 minutes
            method: FETCH
          - id: a
            url: nope
            jitter: -1s
            enabled: maybe
          - "not a mapping"
        """
    )
    assert [line.split(": ")[0] for line in found] == [
        "watcher.yaml:2:8",
        "watcher.yaml:4:27",
        "watcher.yaml:4:56",
        "watcher.yaml:8:12",
        "watcher.yaml:9:13",
        "watcher.yaml:10:9",
        "watcher.yaml:11:10",
        "watcher.yaml:12:13",
        "watcher.yaml:13:14",
        "watcher.yaml:14:5",
    ]
    with pytest.raises(ConfigError) as caught:
        parse(
            """
            queue: "no spaces"
            resources:
              - {id: a, url: nope}
            """
        )
    rendered = str(caught.value).splitlines()
    assert rendered[0] == "watcher.yaml: 2 errors"
    assert rendered[1].startswith("watcher.yaml:2:8: queue: invalid queue name")
    assert rendered[2].startswith('watcher.yaml:4:18: resources[0] (id "a").url: invalid URL')


def test_bad_check_name_and_top_level_shape() -> None:
    message = only_error("resources:\n  - {id: a, url: 'https://a.example/', check: 'my check'}\n")
    assert 'check: invalid check "my check"' in message
    assert "expected a mapping" in only_error("- just\n- a list\n")


def test_options_must_be_plain_values() -> None:
    message = only_error(
        "resources:\n  - id: a\n    url: https://a.example/\n    options: {since: 2024-01-01}\n"
    )
    assert 'resources[0] (id "a").options: since: expected plain YAML values' in message


def test_config_error_for_later_checks_points_at_the_field() -> None:
    config = parse("resources:\n  - id: a\n    url: https://a.example/\n    check: nosuch\n")
    error = config.error(("resources", 0, "check"), 'no check named "nosuch"')
    assert str(error) == 'watcher.yaml:4:12: resources[0] (id "a").check: no check named "nosuch"'


def test_config_error_from_a_message_and_pickling() -> None:
    error = ConfigError("no resources declared", source="w.yaml")
    assert str(error) == "w.yaml: no resources declared"
    with pytest.raises(ConfigError) as caught:
        parse("queue: 'a b'\nresources: 3\n")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value)
    assert copy.errors == caught.value.errors


def test_a_number_where_text_is_expected_gets_a_hint() -> None:
    message = only_error("resources:\n  - {id: 123, url: 'https://a.example/'}\n")
    assert message == (
        "watcher.yaml:2:10: resources[0].id: expected text (got 123); quote it to make it text"
    )
