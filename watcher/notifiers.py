"""Notifiers: where a detected change is sent (console line, webhook, command, apprise)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import httpx
from pydantic import TypeAdapter, ValidationError
from rich.markup import escape

from watcher import __version__
from watcher.apprise_urls import (
    apprise_log_capture,
    apprise_url_problem,
    mask_apprise_text,
    shown_apprise_url,
)
from watcher.backoff import backoff
from watcher.change import Change
from watcher.check import parse_retry_after
from watcher.config import AppriseNotifier as AppriseSpec
from watcher.config import CommandNotifier as CommandSpec
from watcher.config import ConsoleNotifier as ConsoleSpec
from watcher.config import NotifierConfig
from watcher.config import WebhookNotifier as WebhookSpec
from watcher.http import InvalidResponse
from watcher.templates import ChangeTemplates, Message, describe

__all__ = [
    "AppriseNotifier",
    "CommandNotifier",
    "ConsoleNotifier",
    "Notifier",
    "NotifyFailed",
    "WebhookNotifier",
    "build_notifiers",
    "notify_all",
]

changes_log = logging.getLogger("watcher.changes")
notify_log = logging.getLogger("watcher.notify")

# Linux refuses a single environment string over 128 KiB (MAX_ARG_STRLEN) with E2BIG.
_ENV_JSON_LIMIT = 100_000
_ENV_TEXT_LIMIT = 100_000
"""Bytes of WATCHER_TITLE or WATCHER_BODY (UTF-8); a longer one is cut."""
_APPRISE_GRACE = 2.0
"""Seconds past an apprise notifier's timeout before its thread is no longer waited for."""
_APPRISE_REASON_LIMIT = 300
_KILL_GRACE = 2.0
_STDERR_LINE_LIMIT = 300
# What a command gets from the worker's environment besides its WATCHER_* change variables;
# the rest (WATCHER_REDIS_URL and its password, cloud credentials, ...) only when its
# notifier's `env` names it.
COMMAND_BASE_ENV = ("PATH", "HOME", "LANG", "TZ")
COMMAND_BASE_ENV_PREFIXES = ("LC_",)


class NotifyFailed(Exception):
    """A notifier finally failed to deliver a change (after its own retries)."""

    def __init__(
        self,
        notifier: str,
        resource: str,
        reason: str,
        *,
        logged: bool = False,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"notifier {notifier!r} failed for {resource!r}: {reason}")
        self.notifier = notifier
        self.resource = resource
        self.reason = reason
        self.logged = logged
        """True when the notifier already logged the failure, so callers need not repeat it."""
        self.retryable = retryable
        """False when trying again cannot help (a 4xx, an answer that is not HTTP): the
        outbox then marks the delivery failed at once instead of retrying it."""
        self.retry_after = retry_after
        """Seconds the target asked to be left alone (Retry-After), if it said."""


@runtime_checkable
class Notifier(Protocol):
    """Sends one change somewhere.

    A notifier may also expose ``max_duration: float | None``, the longest a ``send`` can take
    (its timeout and retries included); ``notify_all`` uses it as a hard bound.
    """

    name: str

    async def send(self, change: Change) -> None: ...


class ConsoleNotifier:
    """One rich log line per change on the ``watcher.changes`` logger; with a `body`
    template, that body instead (as plain text)."""

    max_duration: float | None = None

    def __init__(
        self,
        name: str = "console",
        logger: logging.Logger | None = None,
        templates: ChangeTemplates | None = None,
    ) -> None:
        self.name = name
        self._log = logger or changes_log
        self.templates = templates or ChangeTemplates(notifier=name)

    def format(self, change: Change) -> str:
        # Resource ids, validators and summaries come from users and servers: escape them so a
        # "[" in an ETag cannot be read as (possibly broken) rich markup.
        return f"[bold]{escape(change.resource)}[/] {escape(self.plain(change, named=False))}"

    @staticmethod
    def plain(change: Change, *, named: bool = True) -> str:
        """The change in words, without markup."""
        if change.event == "change":
            line = f"changed: {describe(change)}"
        elif change.summary.startswith(change.event):  # "down after 3 failed runs: ..."
            line = change.summary
        else:
            line = f"{change.event}: {change.summary}"
        if change.status_code is not None and change.event == "change":
            line += f" ({change.status_code})"
        return f"{change.resource} {line}" if named else line

    async def send(self, change: Change) -> None:
        if self.templates.custom_body:
            self._log.info("%s", self.templates.render(change).body)
            return
        self._log.info(self.format(change), extra={"markup": True})


@dataclass(frozen=True)
class _Attempt:
    reason: str
    retryable: bool
    retry_after: float | None = None


def _exc_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class WebhookNotifier:
    """POSTs the change as JSON, retrying transient failures with backoff and jitter."""

    def __init__(
        self,
        name: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        retries: int = 0,
        client: httpx.AsyncClient | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        templates: ChangeTemplates | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                # Only its scheme and host: the path of a webhook URL is often its credential.
                f"notifier {name!r}: webhook url must be http(s)://host/..., got "
                f"{parsed.scheme or '(no scheme)'}://{parsed.host or '(no host)'}/..."
            )
        if timeout <= 0:
            raise ValueError(f"notifier {name!r}: timeout must be positive, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"notifier {name!r}: retries must be >= 0, got {retries!r}")
        self.name = name
        self.url = url
        self.headers = dict(headers or {})
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.templates = templates or ChangeTemplates(notifier=name)
        self._client = client
        self._request_headers = httpx.Headers({"User-Agent": f"watcher/{__version__}"})
        self._request_headers.update(self.headers)

    @property
    def max_duration(self) -> float:
        return (self.retries + 1) * self.timeout + self.retries * self.backoff_cap + 1.0

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0-based): capped doubling, jittered to 50-100%."""
        return backoff(retry, self.backoff_base, self.backoff_cap)

    async def send(self, change: Change) -> None:
        message = self.templates.render(change)
        payload = {
            **change.to_dict(),
            "title": message.title,
            "body": message.body,
        }
        if self._client is not None:
            await self._deliver(self._client, change, payload)
            return
        async with httpx.AsyncClient() as client:
            await self._deliver(client, change, payload)

    async def _deliver(
        self, client: httpx.AsyncClient, change: Change, payload: dict[str, Any]
    ) -> None:
        for retry in range(self.retries + 1):
            outcome = await self._attempt(client, payload)
            if outcome is None:
                return
            attempts = retry + 1
            if not outcome.retryable:
                reason = f"{outcome.reason} (not retried)"
                break
            if retry == self.retries:
                reason = outcome.reason + (f" after {attempts} attempts" if attempts > 1 else "")
                break
            delay = self.backoff(retry)
            if outcome.retry_after is not None:
                if outcome.retry_after > self.backoff_cap:
                    reason = (
                        f"{outcome.reason} with Retry-After {outcome.retry_after:g}s, "
                        f"over the {self.backoff_cap:g}s cap (gave up after {attempts})"
                    )
                    break
                delay = max(delay, outcome.retry_after)
            notify_log.debug(
                "webhook %r attempt %d for %r failed (%s); retrying in %.2fs",
                self.name,
                attempts,
                change.resource,
                outcome.reason,
                delay,
            )
            await asyncio.sleep(delay)
        # Said by the caller (the courier: once per delivery, not per attempt).
        assert outcome is not None  # the loop returned on success
        raise NotifyFailed(
            self.name,
            change.resource,
            reason,
            retryable=outcome.retryable,
            retry_after=outcome.retry_after,
        )

    async def _attempt(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> _Attempt | None:
        try:
            # httpx's timeout is per read/write; this bounds the whole attempt.
            async with asyncio.timeout(self.timeout):
                response = await client.post(
                    self.url, json=payload, headers=self._request_headers, timeout=self.timeout
                )
        except (TimeoutError, httpx.TimeoutException):
            return _Attempt(f"timed out after {self.timeout:g}s", retryable=True)
        except InvalidResponse as exc:  # asking again gets the same broken answer
            return _Attempt(f"invalid response: {exc}", retryable=False)
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            return _Attempt(_exc_text(exc), retryable=True)
        except httpx.HTTPError as exc:
            return _Attempt(_exc_text(exc), retryable=False)
        if response.is_success:
            return None
        code = response.status_code
        reason = f"HTTP {code} {response.reason_phrase}".rstrip()
        if code == 429 or code >= 500:
            retry_after = None
            if code in (429, 503):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return _Attempt(reason, retryable=True, retry_after=retry_after)
        return _Attempt(reason, retryable=False)


def command_base_env(
    named: Sequence[str] | Mapping[str, str] = (), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a command starts from: PATH, HOME, LANG, LC_*, TZ from `environ` (this
    process's), plus `named`: names to pass on from `environ` too, or a map of values."""
    environ = os.environ if environ is None else environ
    base = {
        name: value
        for name, value in environ.items()
        if name in COMMAND_BASE_ENV or name.startswith(COMMAND_BASE_ENV_PREFIXES)
    }
    if isinstance(named, Mapping):
        base.update(named)
    else:
        base.update({name: environ[name] for name in named if name in environ})
    return base


def _command_env(change: Change, message: Message, base: Mapping[str, str]) -> dict[str, str]:
    as_json = change.to_json()
    if len(as_json) > _ENV_JSON_LIMIT:
        # stdin always carries the full change; the env copy drops the (large) details.
        as_json = replace(change, details=None).to_json()
    values = {
        "WATCHER_RESOURCE": change.resource,
        "WATCHER_URL": change.url,
        "WATCHER_CHECK": change.check,
        "WATCHER_SUMMARY": change.summary,
        "WATCHER_STATUS_CODE": "" if change.status_code is None else str(change.status_code),
        "WATCHER_OLD_ETAG": str(change.old.get("etag") or ""),
        "WATCHER_NEW_ETAG": str(change.new.get("etag") or ""),
        "WATCHER_CHANGE_JSON": as_json,
        "WATCHER_TITLE": _env_text(message.title),
        "WATCHER_BODY": _env_text(message.body),
    }
    # A NUL byte cannot be passed through the environment.
    return {**base, **{k: v.replace("\0", "") for k, v in values.items()}}


def _env_text(text: str) -> str:
    """`text`, cut to fit in one environment variable."""
    encoded = text.encode()
    if len(encoded) <= _ENV_TEXT_LIMIT:
        return text
    note = "\n[… cut to fit in the environment]"
    return encoded[: _ENV_TEXT_LIMIT - 64].decode("utf-8", "ignore") + note


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:_STDERR_LINE_LIMIT] if lines else ""


class CommandNotifier:
    """Runs a program with the change as JSON on stdin and in WATCHER_* environment variables.

    The program gets a clean environment (`command_base_env`), not the worker's: `env` names
    the variables to pass on (a list), or sets them (a map)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        timeout: float = 30.0,
        env: Sequence[str] | Mapping[str, str] = (),
        templates: ChangeTemplates | None = None,
    ) -> None:
        if not argv:
            raise ValueError(f"notifier {name!r}: command must not be empty")
        if timeout <= 0:
            raise ValueError(f"notifier {name!r}: timeout must be positive, got {timeout!r}")
        if isinstance(env, str):
            raise ValueError(f"notifier {name!r}: env must be a list of names or a map")
        bad = [key for key in env if not key or any(c in key for c in "=\0")]
        if bad:
            raise ValueError(f"notifier {name!r}: env: invalid variable name {bad[0]!r}")
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.timeout = float(timeout)
        self.env: Sequence[str] | Mapping[str, str] = (
            {str(k): str(v) for k, v in env.items()} if isinstance(env, Mapping) else list(env)
        )
        self.templates = templates or ChangeTemplates(notifier=name)

    @property
    def max_duration(self) -> float:
        return self.timeout + _KILL_GRACE + 1.0

    async def send(self, change: Change) -> None:
        try:
            await self._run(change)
        except NotifyFailed as exc:
            # argv may carry tokens (curl -H ...): name only the program.
            notify_log.warning(
                "command notifier %r (%s) failed for resource %r: %s",
                self.name,
                self.argv[0],
                change.resource,
                exc.reason,
            )
            exc.logged = True
            raise

    async def _run(self, change: Change) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=_command_env(change, self.templates.render(change), command_base_env(self.env)),
                # Its own process group, so a timeout kills whatever it spawned too.
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            raise NotifyFailed(self.name, change.resource, f"cannot run: {_exc_text(exc)}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                _, stderr = await proc.communicate(change.to_json().encode() + b"\n")
        except TimeoutError:
            raise NotifyFailed(
                self.name, change.resource, f"timed out after {self.timeout:g}s (killed)"
            ) from None
        finally:
            if proc.returncode is None:
                await self._kill(proc)
        code = proc.returncode
        if code == 0:
            return
        if code is not None and code < 0:
            try:
                status = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                status = f"killed by signal {-code}"
        else:
            status = f"exit code {code}"
        line = _last_line(stderr)
        reason = f"{status}: {line}" if line else status
        raise NotifyFailed(self.name, change.resource, reason)

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        except (AttributeError, OSError):  # no process groups on this platform
            proc.kill()
        try:
            # Reap it; bounded, because wait() also waits for the pipes to close.
            async with asyncio.timeout(_KILL_GRACE):
                await proc.wait()
        except TimeoutError:
            notify_log.debug("command notifier %r: pid %d not reaped in time", self.name, proc.pid)


_CAUSES = (
    ("connection refused", ("refused",)),
    ("timed out", ("timed out", "timeout")),
    (
        "cannot resolve host",
        ("name or service not known", "nodename nor servname", "name resolution", "getaddrinfo"),
    ),
    ("TLS error", ("certificate", "ssl")),
    ("authentication failed", ("authentication", "auth failed")),
)
_HTTP_STATUS = re.compile(r"error=(\d{3})\b")


def _apprise_reason(said: Sequence[tuple[int, str]]) -> str:
    """Why a delivery failed, from what apprise logged: the cause (refused, timed out, an
    HTTP status, ...) first, then apprise's own words."""
    warnings = [message for level, message in said if level >= logging.WARNING]
    exceptions = [
        message.partition(":")[2].strip()
        for _, message in said
        if message.startswith("Socket Exception")
    ]
    words = "; ".join(dict.fromkeys(warnings)) or "; ".join(exceptions)
    cause = _cause(" ".join([*exceptions, *warnings]))
    if cause is None and exceptions and warnings:
        words += f" ({exceptions[-1]})"
    if not words:
        return cause or "apprise gave no reason"
    return f"{cause}: {words}" if cause else words


def _cause(text: str) -> str | None:
    status = _HTTP_STATUS.search(text)
    if status:
        return f"HTTP {status.group(1)}"
    lowered = text.lower()
    return next((cause for cause, signs in _CAUSES if any(s in lowered for s in signs)), None)


class AppriseNotifier:
    """Sends the change's title and body to every URL, through apprise (Slack, Discord,
    Telegram, email, ntfy, ...): one attempt per URL, at once, each bounded by `timeout`.

    Apprise is synchronous: each delivery runs in a thread of its own; what apprise logs on
    the way is captured to say why one failed. URLs are shown only masked."""

    def __init__(
        self,
        name: str,
        urls: Sequence[str],
        timeout: float = 30.0,
        templates: ChangeTemplates | None = None,
    ) -> None:
        if isinstance(urls, str) or not urls:
            raise ValueError(f"notifier {name!r}: urls must be a non-empty list")
        if timeout <= 0:
            raise ValueError(f"notifier {name!r}: timeout must be positive, got {timeout!r}")
        for url in urls:
            if problem := apprise_url_problem(url):
                shown = shown_apprise_url(url)
                raise ValueError(f"notifier {name!r}: invalid Apprise URL {shown}: {problem}")
        self.name = name
        self.urls = list(urls)
        self.timeout = float(timeout)
        self.templates = templates or ChangeTemplates(notifier=name)

    def __repr__(self) -> str:
        shown = [shown_apprise_url(url) for url in self.urls]
        return f"AppriseNotifier(name={self.name!r}, urls={shown!r}, timeout={self.timeout:g})"

    @property
    def max_duration(self) -> float:
        return self.timeout + _APPRISE_GRACE + 1.0

    async def send(self, change: Change) -> None:
        message = self.templates.render(change)
        reasons = await asyncio.gather(*(self._deliver(url, message) for url in self.urls))
        failed = [
            f"{shown_apprise_url(url)}: {reason}"
            for url, reason in zip(self.urls, reasons, strict=True)
            if reason is not None
        ]
        if not failed:
            return
        if len(self.urls) > 1:
            failed.insert(0, f"{len(failed)} of {len(self.urls)} URLs failed")
        # Said by the caller (the courier: once per delivery, not per attempt).
        raise NotifyFailed(self.name, change.resource, "; ".join(failed))

    async def _deliver(self, url: str, message: Message) -> str | None:
        """None once delivered, else why not (masked)."""
        try:
            async with asyncio.timeout(self.timeout + _APPRISE_GRACE):
                return await asyncio.to_thread(self._deliver_blocking, url, message)
        except TimeoutError:
            return f"timed out after {self.timeout:g}s"

    def _deliver_blocking(self, url: str, message: Message) -> str | None:
        import apprise

        with apprise_log_capture() as said:
            try:
                # A fresh instance per delivery: no state shared between threads.
                sender = apprise.Apprise()
                sender.add(url)
                result = sender.notify(
                    body=message.body,
                    title=message.title,
                    body_format=apprise.NotifyFormat.TEXT,
                    timeout=self.timeout,
                )
            except Exception as exc:  # a plugin's bug must not pass for a delivery
                return mask_apprise_text(f"apprise crashed: {_exc_text(exc)}", url)
        if result:
            return None
        if getattr(result, "status", None) == apprise.AppriseResultStatus.TIMEOUT:
            return f"timed out after {self.timeout:g}s"
        reason = mask_apprise_text(_apprise_reason(said), url)
        return reason[:_APPRISE_REASON_LIMIT]


_DEFINITION: TypeAdapter[NotifierConfig] = TypeAdapter(NotifierConfig)


def _build_one(
    name: str, definition: NotifierConfig | Mapping[str, Any], client: httpx.AsyncClient | None
) -> Notifier:
    """One notifier from its configuration (a model of watcher.config, or the same as a dict,
    validated by that model)."""
    if isinstance(definition, Mapping):
        try:
            definition = _DEFINITION.validate_python(dict(definition))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"][1:]) or "type"
            raise ValueError(f"notifier {name!r}: {where}: {error['msg']}") from None
    templates = ChangeTemplates(definition.title, definition.body, notifier=name)
    if isinstance(definition, WebhookSpec):
        return WebhookNotifier(
            name,
            definition.url,
            headers=definition.headers,
            timeout=definition.timeout,
            retries=definition.retries,
            client=client,
            templates=templates,
        )
    if isinstance(definition, CommandSpec):
        return CommandNotifier(
            name,
            definition.command,
            timeout=definition.timeout,
            env=definition.env,
            templates=templates,
        )
    if isinstance(definition, AppriseSpec):
        return AppriseNotifier(name, definition.urls, definition.timeout, templates)
    assert isinstance(definition, ConsoleSpec)
    return ConsoleNotifier(name, templates=templates)


def delivery_deadlines(
    definitions: Mapping[str, NotifierConfig | Mapping[str, Any]],
) -> dict[str, float]:
    """Seconds each notifier's deliveries are retried (`deliver_within`) before they fail."""
    deadlines = {}
    for name, definition in definitions.items():
        within = (
            definition.get("deliver_within")
            if isinstance(definition, Mapping)
            else getattr(definition, "deliver_within", None)
        )
        if within is not None:
            deadlines[name] = float(within)
    return deadlines


def build_notifiers(
    definitions: Mapping[str, NotifierConfig | Mapping[str, Any]],
    client: httpx.AsyncClient | None = None,
) -> dict[str, Notifier]:
    """Notifiers by name from their configuration; a ``console`` notifier is always present.
    An apprise notifier with several URLs also gets one notifier per URL, ``name#1``,
    ``name#2``...: the outbox delivers to each URL on its own (`delivery_targets`), so a URL
    that fails is retried without sending again to those that worked."""
    notifiers = {name: _build_one(name, d, client) for name, d in definitions.items()}
    for name, notifier in list(notifiers.items()):
        if isinstance(notifier, AppriseNotifier) and len(notifier.urls) > 1:
            for at, url in enumerate(notifier.urls, 1):
                single = f"{name}#{at}"
                notifiers[single] = AppriseNotifier(
                    single, [url], notifier.timeout, notifier.templates
                )
    notifiers.setdefault("console", ConsoleNotifier("console"))
    return notifiers


def delivery_targets(name: str, notifiers: Mapping[str, Notifier]) -> list[str]:
    """The outbox deliveries a change for notifier `name` becomes: one, or one per URL of an
    apprise notifier with several (see `build_notifiers`)."""
    notifier = notifiers.get(name)
    if isinstance(notifier, AppriseNotifier) and len(notifier.urls) > 1:
        return [f"{name}#{at}" for at in range(1, len(notifier.urls) + 1)]
    return [name]


async def _bounded_send(notifier: Notifier, change: Change) -> None:
    limit = getattr(notifier, "max_duration", None)
    if limit is None:
        await notifier.send(change)
        return
    try:
        async with asyncio.timeout(limit):
            await notifier.send(change)
    except TimeoutError:
        raise NotifyFailed(
            notifier.name, change.resource, f"gave no answer within {limit:g}s"
        ) from None


async def notify_all(
    notifiers: Sequence[Notifier],
    change: Change,
    *,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> list[str]:
    """Send ``change`` to every notifier concurrently; return the names of those that failed."""
    results = await asyncio.gather(
        *(_bounded_send(n, change) for n in notifiers), return_exceptions=True
    )
    failed: list[str] = []
    for notifier, result in zip(notifiers, results, strict=True):
        if result is None:
            continue
        failed.append(notifier.name)
        if isinstance(result, NotifyFailed):
            if not result.logged:
                log.warning("%s", result)
        else:
            log.error(
                "notifier %r crashed for resource %r: %s",
                notifier.name,
                change.resource,
                _exc_text(result),
                exc_info=result,
            )
    return failed
