"""Notifier title and body templates: the defaults, the fields, the errors at load (with
their line), the sandbox, the size cap, and what each notifier does with them."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import time
from pathlib import Path

import pytest

from watcher.config import ConfigError, parse_config
from watcher.notifiers import CommandNotifier, ConsoleNotifier, WebhookNotifier, build_notifiers
from watcher.templates import MAX_BODY, ChangeTemplates, template_problem

from .origin import Origin
from .test_cli import watcher
from .test_notifiers import RECORD_SCRIPT, make_change

DEFAULT_BODY = 'docs (https://example.test/docs) changed at 2023-11-14 22:13 UTC: ETag "a" → "b"'


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), env={})
    [issue] = caught.value.errors
    return str(issue)


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "template failed" in r.getMessage()]


# --- rendering -------------------------------------------------------------------------------


def test_defaults_read_as_a_sentence() -> None:
    message = ChangeTemplates().render(make_change())
    assert message.title == "watcher: docs changed"
    assert message.body == DEFAULT_BODY


def test_default_body_ends_with_the_diff() -> None:
    body = ChangeTemplates().render(make_change(details="--- a\n+++ b\n-old\n+new")).body
    assert body == DEFAULT_BODY + "\n\n--- a\n+++ b\n-old\n+new"


def test_default_summary_describes_the_validators_when_the_check_gave_none() -> None:
    change = make_change(summary="", old={"etag": '"a"'}, new={"etag": '"c"'})
    assert ChangeTemplates().render(change).body.endswith('UTC: ETag "a" → "c"')


def test_custom_templates_see_every_field() -> None:
    title = "[{{ event }}] {{ resource }} ({{ check }}, {{ status_code }})"
    body = textwrap.dedent(
        """\
        {{ url }} at {{ time.isoformat() }}
        {{ summary }}: {{ old.etag }} -> {{ new.etag }}
        {% if diff %}{{ diff }}{% endif %}|{{ details }}"""
    )
    message = ChangeTemplates(title, body).render(make_change(details="+x"))
    assert message.title == "[change] docs (etag, 200)"
    assert message.body == (
        "https://example.test/docs at 2023-11-14T22:13:20.500000+00:00\n"
        'ETag "a" → "b": "a" -> "b"\n'
        "+x|+x"
    )


def test_output_is_not_escaped() -> None:
    change = make_change(summary="<b>&</b>")
    assert ChangeTemplates(body="{{ summary }}").render(change).body == "<b>&</b>"


def test_a_long_rendering_is_cut_with_a_note() -> None:
    templates = ChangeTemplates(body="{% for i in range(100000) %}{{ i }} {% endfor %}")
    body = templates.render(make_change()).body
    assert len(body) == MAX_BODY
    assert body.endswith(f"[… cut: longer than {MAX_BODY:,} characters]")


def test_a_failing_template_falls_back_to_the_default(caplog: pytest.LogCaptureFixture) -> None:
    templates = ChangeTemplates(title="{{ old.etag }}", body="{{ old.etag }}", notifier="team")
    message = templates.render(make_change(old={}))
    assert message.title == "watcher: docs changed" and message.body == DEFAULT_BODY
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 2
    assert (
        "'team'" in warnings[1] and "'docs'" in warnings[1] and "no attribute 'etag'" in warnings[1]
    )


@pytest.mark.parametrize(
    "body",
    [
        "{{ resource|attr('__class__') }}",
        "{{ resource|attr('__cla' ~ 'ss__') }}",
        "{{ resource|attr('format')|attr('__globals__') }}",
        "{{ old|attr('__class__')|attr('__subclasses__') }}",
    ],
)
def test_the_sandbox_blocks_internals_at_run_time(
    body: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert template_problem(body) is None  # `attr` gets past the check at load
    message = ChangeTemplates(body=body).render(make_change())
    assert message.body == DEFAULT_BODY
    [warning] = fallback_warnings(caplog)
    assert "SecurityError" in warning or "StrictUndefined" in warning


def test_enormous_values_are_refused_at_once(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    enormous = (
        '{{ "x" * 10**9 }}',
        "{{ 2 ** 1000000 }}",
        "{{ [1] * 10**9 }}",
        '{{ "x".ljust(10**8) }}',
        '{{ "%0100000000d" % 1 }}',
        '{{ "{:>100000000}".format(1) }}',
    )
    for body in enormous:
        assert ChangeTemplates(body=body).render(make_change()).body == DEFAULT_BODY
    assert time.monotonic() - started < 2
    assert len(fallback_warnings(caplog)) == len(enormous)
    said = '{{ "%5d" % 3 }}|{{ "a".ljust(3) }}|{{ "{:>4}".format(1) }}'
    assert ChangeTemplates(body=said).render(make_change()).body == "    3|a  |   1"


# --- errors at load ----------------------------------------------------------------------------

NOTIFIER_HEADS = {
    "console": "type: console",
    "webhook": "type: webhook\n    url: https://hooks.example/x",
    "command": "type: command\n    command: [echo]",
    "apprise": "type: apprise\n    urls: [json://127.0.0.1:9/]",
}


def notifier_yaml(kind: str, body: str) -> str:
    head = NOTIFIER_HEADS[kind]
    return f"notifiers:\n  team:\n    {head}\n    body: |\n{textwrap.indent(body, '      ')}\n"


@pytest.mark.parametrize("kind", list(NOTIFIER_HEADS))
def test_unknown_variable_is_a_config_error_with_its_line(kind: str) -> None:
    text = notifier_yaml(kind, "{{ resource }} changed\n{{ resorce }} again")
    message = config_error(text)
    line = text.splitlines().index("    body: |") + 1
    assert message.startswith(f"watcher.yaml:{line}:")
    assert "notifiers.team.body: unknown template variable `resorce` on line 2;" in message
    assert "expected one of resource, url, check, summary" in message


@pytest.mark.parametrize("kind", list(NOTIFIER_HEADS))
def test_syntax_error_is_a_config_error_with_its_line(kind: str) -> None:
    text = notifier_yaml(kind, "first\nsecond\n{% if diff %}{{ diff }}")
    message = config_error(text)
    line = text.splitlines().index("    body: |") + 1
    assert message.startswith(f"watcher.yaml:{line}:")
    assert "notifiers.team.body: template syntax error on line 3:" in message


def test_title_errors_name_the_title_field() -> None:
    message = config_error("notifiers:\n  team:\n    type: console\n    title: '{{ nope'\n")
    assert message.startswith("watcher.yaml:4:12: notifiers.team.title: template syntax error")


def test_private_attributes_are_refused_at_load() -> None:
    message = config_error(
        "notifiers:\n  team:\n    type: console\n    body: \"{{ ''.__class__.__mro__ }}\"\n"
    )
    assert message.startswith("watcher.yaml:4:11: notifiers.team.body: template uses")
    assert "`__class__`, `__mro__`, which the sandbox refuses" in message


def test_templates_load_into_the_notifiers() -> None:
    config = parse_config(
        notifier_yaml("webhook", "{{ summary }}") + "    title: '{{ resource }}!'\n", env={}
    )
    hook = build_notifiers(config.notifiers)["team"]
    assert isinstance(hook, WebhookNotifier)
    message = hook.templates.render(make_change())
    assert (message.title, message.body) == ("docs!", 'ETag "a" → "b"')


def test_sync_refuses_a_bad_template_with_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "watcher.yaml").write_text(
        "notifiers:\n  team:\n    type: webhook\n    url: https://hooks.example/x\n"
        "    body: '{{ resource }} {{ nope }}'\n"
        "resources:\n  - id: docs\n    url: https://example.org/docs\n    notify: [team]\n"
    )
    done = watcher("sync", "--dry-run", cwd=tmp_path)
    assert done.returncode == 2, done
    assert "watcher.yaml:5:11: notifiers.team.body: unknown template variable `nope`" in (
        done.stderr + done.stdout
    )
    assert "Traceback" not in done.stderr


# --- what each notifier does with them ---------------------------------------------------------


async def test_webhook_adds_title_and_body_to_its_payload(origin: Origin) -> None:
    templates = ChangeTemplates("{{ resource }} moved", "now {{ new.etag }}")
    change = make_change(id="1-0", details="+x")
    await WebhookNotifier("hook", origin.url + "hook", templates=templates).send(change)
    payload = json.loads(origin.requests[0].body)
    assert payload == {
        **change.to_dict(),
        "event": "change",
        "title": "docs moved",
        "body": 'now "b"',
    }


async def test_webhook_sends_the_default_title_and_body(origin: Origin) -> None:
    await WebhookNotifier("hook", origin.url).send(make_change())
    payload = json.loads(origin.requests[0].body)
    assert (payload["title"], payload["body"]) == ("watcher: docs changed", DEFAULT_BODY)


async def test_command_gets_title_and_body_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = [sys.executable, "-c", RECORD_SCRIPT, str(out)]
    templates = ChangeTemplates(body="{{ resource }}: {{ summary }}")
    change = make_change()
    await CommandNotifier("cmd", argv, 5, templates=templates).send(change)
    seen = json.loads(out.read_text())
    assert seen["env"]["WATCHER_TITLE"] == "watcher: docs changed"
    assert seen["env"]["WATCHER_BODY"] == 'docs: ETag "a" → "b"'
    assert seen["env"]["WATCHER_CHANGE_JSON"] == change.to_json()  # the existing ones stay
    assert json.loads(seen["stdin"]) == change.to_dict()


async def test_command_body_is_cut_to_fit_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = [sys.executable, "-c", RECORD_SCRIPT, str(out)]
    templates = ChangeTemplates(body="{% for i in range(30000) %}ééé{% endfor %}")
    await CommandNotifier("cmd", argv, 5, templates=templates).send(make_change())
    body = json.loads(out.read_text())["env"]["WATCHER_BODY"]
    assert body.endswith("[… cut to fit in the environment]")
    assert len(body.encode()) <= 100_000


async def test_console_logs_its_body_template(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="watcher.changes")
    templates = ChangeTemplates(body="{{ resource }} [moved] to {{ new.etag }}")
    await ConsoleNotifier("console", templates=templates).send(make_change())
    [record] = [r for r in caplog.records if r.name == "watcher.changes"]
    assert record.getMessage() == 'docs [moved] to "b"'
    assert not getattr(record, "markup", False)


async def test_console_keeps_its_line_without_a_body(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="watcher.changes")
    await ConsoleNotifier("console", templates=ChangeTemplates(title="ignored")).send(make_change())
    [record] = [r for r in caplog.records if r.name == "watcher.changes"]
    assert record.getMessage() == '[bold]docs[/] changed: ETag "a" → "b" (200)'
