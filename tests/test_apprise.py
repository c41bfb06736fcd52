"""The apprise notifier, against real targets on 127.0.0.1: a JSON receiver (tests/origin.py)
and an SMTP server (aiosmtpd); URLs checked at load, masked wherever they are shown."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from watcher.apprise_urls import shown_apprise_url
from watcher.config import AppriseNotifier as AppriseSpec
from watcher.config import Config, ConfigError, parse_config
from watcher.notifiers import AppriseNotifier, NotifyFailed, build_notifiers
from watcher.templates import ChangeTemplates

from .origin import Origin
from .test_cli import resource, start_run, write_config
from .test_notifiers import make_change

SECRET = "s3cr3t-path-token"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def posted(origin: Origin) -> list[dict[str, Any]]:
    return [json.loads(seen.body) for seen in origin.requests if seen.method == "POST"]


def notify_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "watcher.notify" and r.levelno >= logging.WARNING
    ]


# --- an SMTP server on 127.0.0.1 -----------------------------------------------------------------


@dataclass
class Mailbox:
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and data.password == b"pass":
            self.logins.append(data.login)
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        authenticator=box.authenticate,
        auth_require_tls=False,  # plain SMTP on 127.0.0.1: apprise's mailto:// (not mailtos://)
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


# --- delivering ------------------------------------------------------------------------------


async def test_json_target_receives_the_rendered_title_and_body(origin: Origin) -> None:
    notifier = AppriseNotifier("team", [f"json://127.0.0.1:{origin.port}/hook/{SECRET}"])
    await notifier.send(make_change(details="- a\n+ b"))
    [payload] = posted(origin)
    assert payload["title"] == "watcher: docs changed"
    assert payload["message"] == (
        'docs (https://example.test/docs) changed at 2023-11-14 22:13 UTC: ETag "a" → "b"'
        "\n\n- a\n+ b"
    )
    assert origin.requests[0].path == f"/hook/{SECRET}"


@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
async def test_mailto_target_receives_the_rendered_title_and_body(mailbox: Mailbox) -> None:
    url = f"mailto://user:pass@127.0.0.1:{mailbox.port}?from=a@example.com&to=b@example.com"
    templates = ChangeTemplates("[{{ resource }}] {{ summary }}", "new: {{ new.etag }}")
    await AppriseNotifier("mail", [url], timeout=10, templates=templates).send(make_change())
    [message] = mailbox.messages
    assert mailbox.logins == [b"user"]
    assert message["Subject"] == '[docs] ETag "a" → "b"'
    assert message["To"] == "b@example.com" and "a@example.com" in message["From"]
    text = message.get_body(preferencelist=("plain",))
    assert text is not None and text.get_content().strip() == 'new: "b"'


async def test_debug_logs_do_not_show_the_url(
    origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await AppriseNotifier("team", [f"json://127.0.0.1:{origin.port}/hook/{SECRET}"]).send(
        make_change()
    )
    assert len(posted(origin)) == 1
    assert SECRET not in caplog.text


async def test_every_url_gets_the_change(origin: Origin) -> None:
    with Origin() as other:
        urls = [f"json://127.0.0.1:{origin.port}/a", f"json://127.0.0.1:{other.port}/b"]
        await AppriseNotifier("both", urls).send(make_change())
        assert len(posted(origin)) == len(posted(other)) == 1


# --- failing -----------------------------------------------------------------------------------


async def test_refused_port_says_refused_and_masks_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    url = f"json://127.0.0.1:{port}/hook/{SECRET}?+X-Api-Key=k3y-value"
    with pytest.raises(NotifyFailed) as failed:
        await AppriseNotifier("team", [url]).send(make_change())
    reason = failed.value.reason
    assert reason.startswith(f"json://127.0.0.1:{port}/***: connection refused")
    assert failed.value.notifier == "team"
    assert notify_warnings(caplog) == []  # the caller (the courier) says it, once per delivery
    assert SECRET not in caplog.text + reason and "k3y-value" not in caplog.text + reason


async def test_http_error_status_is_the_reason(origin: Origin) -> None:
    origin.set(status=500, reason="Internal Server Error")
    with pytest.raises(NotifyFailed, match=r"HTTP 500"):
        await AppriseNotifier("team", [f"json://127.0.0.1:{origin.port}/"]).send(make_change())
    assert len(origin.requests) == 1  # one attempt: retrying is the outbox's job


async def test_a_target_that_does_not_answer_times_out(origin: Origin) -> None:
    origin.set(hang=True)
    notifier = AppriseNotifier("team", [f"json://127.0.0.1:{origin.port}/"], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(NotifyFailed, match=r"timed out after 0\.5s"):
        await notifier.send(make_change())
    assert time.monotonic() - started < notifier.max_duration
    assert notifier.max_duration < 5


async def test_one_failing_url_of_two_is_named_alone(origin: Origin) -> None:
    refused = free_port()
    urls = [f"json://127.0.0.1:{origin.port}/ok", f"json://127.0.0.1:{refused}/{SECRET}"]
    with pytest.raises(NotifyFailed) as failed:
        await AppriseNotifier("team", urls).send(make_change())
    assert failed.value.reason.startswith(
        f"1 of 2 URLs failed; json://127.0.0.1:{refused}/***: connection refused"
    )
    assert str(origin.port) not in failed.value.reason
    assert len(posted(origin)) == 1


async def test_concurrent_sends_keep_their_own_reasons(origin: Origin) -> None:
    refused = AppriseNotifier("refused", [f"json://127.0.0.1:{free_port()}/"])
    origin.set(status=503, reason="Service Unavailable")
    erroring = AppriseNotifier("erroring", [f"json://127.0.0.1:{origin.port}/"])
    sends = [notifier.send(make_change()) for _ in range(5) for notifier in (refused, erroring)]
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert len(results) == 10
    for exc in results:
        assert isinstance(exc, NotifyFailed)
        expected = "connection refused" if exc.notifier == "refused" else "HTTP 503"
        other = "HTTP 503" if exc.notifier == "refused" else "connection refused"
        assert expected in exc.reason and other not in exc.reason


# --- configuration -----------------------------------------------------------------------------


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), env=env or {})


def config_errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return [str(issue) for issue in caught.value.errors]


def test_urls_come_from_the_environment_and_are_masked_in_repr() -> None:
    config = parse(
        """
        notifiers:
          team:
            type: apprise
            urls:
              - slack://T1JJ3T3L2/A1BRTD4JD/${SLACK_TOKEN}/#general
              - mailto://me:${MAIL_PASSWORD}@smtp.example.com?to=ops@example.com
            timeout: 5s
        """,
        {"SLACK_TOKEN": "TIiajkdnlazkcOXrIdevi7FQ", "MAIL_PASSWORD": "hunter2-mail"},
    )
    team = config.notifiers["team"]
    assert isinstance(team, AppriseSpec) and team.timeout == 5.0
    assert team.urls[0] == "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general"
    assert team.shown_urls() == ["slack://***/***", "mailto://me:***@smtp.example.com"]
    for text in (repr(team), repr(config), str(config.notifiers)):
        assert "TIiajkdnlazkcOXrIdevi7FQ" not in text and "hunter2-mail" not in text
        assert "T1JJ3T3L2" not in text
    notifier = build_notifiers({"team": team})["team"]
    assert isinstance(notifier, AppriseNotifier) and notifier.timeout == 5.0
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in repr(notifier)


def test_a_single_url_stands_for_a_list_of_one() -> None:
    team = parse("notifiers:\n  team: {type: apprise, urls: 'ntfy://ntfy.example.com/alerts'}\n")
    assert team.notifiers["team"].urls == ["ntfy://ntfy.example.com/alerts"]  # type: ignore[union-attr]


def test_unknown_scheme_is_a_config_error_with_line_and_suggestion() -> None:
    [message] = config_errors(
        """
        notifiers:
          team:
            type: apprise
            urls:
              - json://127.0.0.1:9/hook
              - slakc://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ
        """
    )
    assert message.startswith('watcher.yaml:7:9: notifiers.team.urls[1]: invalid Apprise URL "')
    assert "unknown scheme `slakc://` (did you mean `slack://`?)" in message
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in message


def test_malformed_url_is_a_config_error_that_masks_its_secret() -> None:
    [message] = config_errors(
        "notifiers:\n  team:\n    type: apprise\n    urls: ['discord://${HOOK_ID}']\n",
        {"HOOK_ID": "41742162985551"},
    )
    assert message.startswith("watcher.yaml:4:12: notifiers.team.urls[0]: invalid Apprise URL")
    assert "apprise says: An invalid Discord Webhook Token" in message
    assert "41742162985551" not in message


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        ("[]", "expected at least one Apprise URL"),
        ("['https://hooks.example.com/x']", "for a plain JSON POST use json://"),
        ("['not a url']", "expected scheme://"),
    ],
)
def test_other_bad_urls(urls: str, expected: str) -> None:
    [message] = config_errors(f"notifiers:\n  team:\n    type: apprise\n    urls: {urls}\n")
    assert message.startswith("watcher.yaml:4:") and expected in message


def test_build_notifiers_checks_apprise_urls_too() -> None:
    with pytest.raises(ValueError, match=r"unknown scheme `nope://`"):
        build_notifiers({"bad": {"type": "apprise", "urls": ["nope://x"]}})
    with pytest.raises(ValueError, match="non-empty"):
        AppriseNotifier("bad", [])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general", "slack://***/***"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://***/***"),
        ("tgram://123456789:abcdefg_hijklmnop/12315544/", "tgram://***/***"),
        ("ntfy://my-secret-topic", "ntfy://***"),
        ("ntfy://ntfy.example.com/topic", "ntfy://ntfy.example.com/***"),
        ("json://127.0.0.1:8080/hook/tok?+Authorization=Bearer%20x", "json://127.0.0.1:8080/***"),
        (
            "mailto://me:pw@smtp.example.com:587?to=a@example.com",
            "mailto://me:***@smtp.example.com:587",
        ),
        ("pover://userkey@apptoken", "pover://***@***"),
        ("nonsense", "***"),
    ],
)
def test_shown_url_keeps_only_what_is_not_a_credential(url: str, shown: str) -> None:
    assert shown_apprise_url(url) == shown


# --- through the console script ------------------------------------------------------------------


def test_watcher_run_sends_a_change_through_apprise(
    tmp_path: Path,
    redis_url: str,
    queue_name: str,
    origin: Origin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    with Origin() as sink:
        config = write_config(
            tmp_path / "watcher.yaml",
            redis_url,
            queue_name,
            resource("docs", origin.url + "docs", extra="    notify: [team]\n"),
        )
        with config.open("a") as yaml_file:
            yaml_file.write(
                "notifiers:\n  team:\n    type: apprise\n"
                f"    urls:\n      - json://127.0.0.1:{sink.port}/hook/${{HOOK_TOKEN}}\n"
                "    title: '{{ resource }}: {{ old.etag }} to {{ new.etag }}'\n"
            )
        run = start_run(tmp_path)
        try:
            wait_while_running(run, lambda: len(origin.requests) >= 1, "the baseline run")
            origin.set(etag='"v2"')
            wait_while_running(run, lambda: bool(posted(sink)), "the apprise POST")
        finally:
            run.send_signal(signal.SIGTERM)
            out, _ = run.communicate(timeout=30)
        [payload] = posted(sink)
        assert payload["title"] == 'docs: "v1" to "v2"'
        assert payload["message"].startswith(f"docs ({origin.url}docs) changed at ")
        assert sink.requests[0].path == f"/hook/{SECRET}"
    assert run.returncode == 0, out
    assert SECRET not in out


def wait_while_running(
    run: subprocess.Popen[str], predicate: Callable[[], bool], what: str, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if run.poll() is not None:
            raise AssertionError(f"{what}: `watcher run` exited with {run.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)
