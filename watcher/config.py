"""The configuration file, ``watcher.yaml``: load it, check it, explain what is wrong.

The YAML is composed into nodes first, so that every key and value keeps its line and
column; the nodes are built into plain data, ``${VAR}`` references are expanded,
``defaults`` are merged into each resource and pydantic validates the result. Every
problem found on the way is collected with its position, and all of them are raised
together as one :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, available_timezones

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails

from watcher import secrets
from watcher.apprise_urls import APPRISE_EXAMPLES, apprise_url_problem, shown_apprise_url
from watcher.bulk import collector_paused
from watcher.connection import queue_name_for
from watcher.freshness import DEFAULT_MAX_EVERY
from watcher.hosts import DEFAULT_CONCURRENCY, Budget, host_key_problem, parse_rate
from watcher.limits import BYTES_VARIABLE, Limits, format_size
from watcher.masking import is_secret, mask_headers
from watcher.outbox import DEFAULT_DELIVER_WITHIN
from watcher.schedule import Schedule, ScheduleError, format_duration
from watcher.yaml_source import (
    ConfigError,
    ConfigIssue,
    Path,
    Report,
    SourceMap,
    load_yaml,
    show,
    substitute,
)

log = logging.getLogger("watcher.config")

__all__ = [
    "AppriseNotifier",
    "CommandNotifier",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConsoleNotifier",
    "NotifierConfig",
    "ResourceConfig",
    "WebhookNotifier",
    "load_config",
    "parse_config",
    "parse_duration",
]


DEFAULT_EVERY = 300.0
MIN_EVERY = 1.0
"""The shortest `every` a resource may ask for unless it sets `min_every` lower."""
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
TOP_LEVEL_KEYS = (
    "redis",
    "queue",
    "history_limit",
    "hosts",
    "metrics",
    "defaults",
    "notifiers",
    "resources",
    "resources_from",
)


# ---------------------------------------------------------------------------- durations

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER_RE = re.compile(_NUMBER)
_DURATION_PART_RE = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)\s*")
_DURATION_RE = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HINT = "expected e.g. 30s, 5m, 1h30m, 2d, 500ms or a number of seconds"


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: ``30s``, ``5m``, ``1h30m``, ``2d``, ``500ms`` or a number."""
    seconds: float | None = None
    if isinstance(value, str):
        seconds = _duration_text_seconds(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            seconds = float(value)
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"invalid duration {show(value)}; {DURATION_HINT}")
    return seconds


@functools.lru_cache(maxsize=1024)
def _duration_text_seconds(value: str) -> float | None:
    """Cached: a long list's resources share a few durations, written the same way."""
    text = value.strip().lower()
    if _PLAIN_NUMBER_RE.fullmatch(text):
        return float(text)
    if _DURATION_RE.fullmatch(text):
        parts = _DURATION_PART_RE.findall(text)
        return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    return None


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a duration greater than 0 (got {show(value)})")
    return seconds


def _non_negative_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(f"must be a duration of 0 or more (got {show(value)})")
    return seconds


# ---------------------------------------------------------------------------- field checks

_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_QUEUE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CHECK_RE = re.compile(
    rf"[A-Za-z0-9_][A-Za-z0-9_.-]*|{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*"
)


def _matching(pattern: re.Pattern[str], what: str, expected: str) -> Callable[[str], str]:
    """A validator: the value must match `pattern` whole, else "invalid <what>; expected…"."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"invalid {what} {show(value)}; expected {expected}")
        return value

    return check


_resource_id = _matching(
    _ID_RE,
    "id",
    "1-128 characters from letters, digits and _ . : - "
    "(the id is part of Redis keys: no spaces or braces)",
)
_queue_name = _matching(_QUEUE_RE, "queue name", "1-64 characters from letters, digits and _ . -")
_check_name = _matching(
    _CHECK_RE, "check", "a registered name like etag, or a dotted path like package.module:name"
)


_WHITESPACE_RE = re.compile(r"\s")
_PLAIN_HTTP_URL_RE = re.compile(r"(?i:https?)://[A-Za-z0-9.-]+(?::(?P<port>\d{1,5}))?(?:[/?#]\S*)?")
"""A URL that urlsplit reads as http(s) with a host and a port in range (when it is at most
65535): most URLs of a long list, checked in a fraction of urlsplit's time."""
HTTP_SCHEMES = ("http", "https")


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    if not url:
        return "it is empty"
    plain = schemes == HTTP_SCHEMES and _PLAIN_HTTP_URL_RE.fullmatch(url)
    if plain and int(plain["port"] or 0) <= 65535:
        return None
    if _WHITESPACE_RE.search(url):
        return "it contains whitespace"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        return str(exc)
    if parts.scheme.lower() not in schemes:
        return f"the scheme must be {' or '.join(schemes)}"
    if not parts.hostname and parts.scheme != "unix":
        return "it has no host"
    return None


def _http_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # the str type reports it
    problem = _url_problem(value.strip(), HTTP_SCHEMES)
    if problem:
        raise ValueError(
            f"invalid URL {show(value)}: {problem}; expected e.g. https://example.com/page"
        )
    return value.strip()


def _redis_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    problem = _url_problem(value.strip(), ("redis", "rediss", "unix"))
    if problem:
        raise ValueError(
            f"invalid Redis URL {show(value)}: {problem}; expected e.g. redis://localhost:6379/0"
        )
    return value.strip()


def _method(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    method = value.strip().upper()
    if method not in METHODS:
        raise ValueError(f"invalid method {show(value)}; expected one of {', '.join(METHODS)}")
    return method


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(
            f"unknown time zone {show(value)}{_did_you_mean_zone(value)};"
            " expected an IANA name like UTC or Europe/Paris"
        ) from None
    return value


def _did_you_mean_zone(value: str) -> str:
    by_lower = {name.lower(): name for name in available_timezones()}
    exact = by_lower.get(value.lower())
    close = [exact] if exact else difflib.get_close_matches(value, list(by_lower.values()), n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _cron_expression(value: str, tz: str) -> str:
    expression = " ".join(value.split())
    try:
        CronTrigger.from_crontab(expression, timezone=ZoneInfo(tz))
    except ValueError as exc:
        raise ValueError(
            f"invalid cron expression {show(value)}: {exc}; expected 5 fields"
            ' (minute hour day month day-of-week), e.g. "0 9 * * 1-5"'
        ) from None
    _workable_schedule(cron=expression, tz=tz)
    return expression


def _workable_schedule(**schedule: Any) -> None:
    """ValueError for a schedule that could never run as written (the queue's own rules)."""
    try:
        Schedule.build(**schedule)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None


def _every_above_floor(every: float, floor: float) -> None:
    if every < floor:
        shown = format_duration(every)
        raise ValueError(
            f"`every` {shown} is shorter than the floor of {format_duration(floor)}, which"
            f" keeps a mistyped interval from flooding a server; to check this often, set"
            f" `min_every: {shown}` on this resource (or in defaults)"
        )


def _header_name(value: str) -> str:
    if not _HEADER_NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid header name {show(value)}; expected letters, digits and - (no spaces)"
        )
    return value


def _header_value(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # `Accept-Version: 2` is meant as text
    if isinstance(value, str):
        if any(char in value for char in "\r\n\0"):
            raise ValueError("a header value cannot contain line breaks")
        return value.strip()  # `Bearer ${TOKEN:-}` must not end in a space
    return value


def _without_empty(headers: dict[str, str]) -> dict[str, str]:
    """An empty value means "do not send": `X-Token: ${TOKEN:-}` is optional."""
    return {name: value for name, value in headers.items() if value}


def _string_list(value: Any) -> Any:
    """A single string stands for a list of one; duplicates are dropped."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(dict.fromkeys(value))
    return value


def _command_line(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command {show(value)}: {exc}") from None
    if isinstance(value, list):
        if not value:
            raise ValueError("the command is empty; expected e.g. [notify-send, watcher]")
        return [str(arg) if isinstance(arg, int | float) else arg for arg in value]
    return value


def _json_compatible(value: dict[str, Any]) -> dict[str, Any]:
    problem = _first_non_json(value, "")
    if problem:
        where, kind = problem
        raise ValueError(
            f"{where or 'value'}: expected plain YAML values (text, numbers, true/false,"
            f" lists, mappings), got {kind}; quote it to keep it as text"
        )
    return value


def _first_non_json(value: Any, where: str) -> tuple[str, str] | None:
    if value is None or isinstance(value, str | int | float | bool):
        return None
    if isinstance(value, list):
        items: Iterable[tuple[str, Any]] = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict) and all(isinstance(key, str) for key in value):
        items = ((f"{where}.{key}" if where else key, v) for key, v in value.items())
    else:
        return where, f"a {type(value).__name__}"
    for sub_where, item in items:
        problem = _first_non_json(item, sub_where)
        if problem:
            return problem
    return None


ResourceId = Annotated[str, AfterValidator(_resource_id)]
QueueName = Annotated[str, AfterValidator(_queue_name)]
CheckName = Annotated[str, AfterValidator(_check_name)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
RedisUrl = Annotated[str, BeforeValidator(_redis_url)]
Method = Annotated[str, BeforeValidator(_method)]
TimeZone = Annotated[str, AfterValidator(_time_zone)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
NonNegativeDuration = Annotated[float, BeforeValidator(_non_negative_duration)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
Headers = Annotated[
    dict[HeaderName, Annotated[str, BeforeValidator(_header_value)]],
    AfterValidator(_without_empty),
]
NameList = Annotated[list[str], BeforeValidator(_string_list)]
HeaderNameList = Annotated[list[HeaderName], BeforeValidator(_string_list)]
CommandLine = Annotated[list[str], BeforeValidator(_command_line)]
Options = Annotated[dict[str, Any], AfterValidator(_json_compatible)]


# ---------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        return _drop_empty(data)


def _drop_empty(data: Any) -> Any:
    # `headers:` with nothing after it is YAML null: treat it as "not set".
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if value is not None}
    return data


def _message_template(value: str) -> str:
    # Imported here: jinja2 is loaded only by configurations that have templates.
    from watcher.templates import template_problem

    problem = template_problem(value)
    if problem:
        raise ValueError(problem)
    return value


MessageTemplate = Annotated[str, AfterValidator(_message_template)]
"""A notifier's `title:` or `body:` (watcher.templates); None: the default."""


class ConsoleNotifier(_Model):
    type: Literal["console"] = "console"
    title: MessageTemplate | None = None
    body: MessageTemplate | None = None
    """Replaces the console's log line when set."""


class WebhookNotifier(_Model):
    type: Literal["webhook"] = "webhook"
    url: HttpUrl
    headers: Headers = Field(default_factory=dict, repr=False)
    timeout: PositiveDuration = 10.0
    retries: int = Field(default=0, ge=0)
    """Quick retries within one delivery attempt; the outbox retries deliveries anyway, with
    backoff, until `deliver_within`."""
    deliver_within: PositiveDuration = DEFAULT_DELIVER_WITHIN
    title: MessageTemplate | None = None
    body: MessageTemplate | None = None

    def masked_headers(self) -> dict[str, str]:
        return mask_headers(self.headers)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_names(value: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
    bad = [name for name in value if not _ENV_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"invalid variable name {bad[0]!r}: use letters, digits and _")
    return value


class CommandNotifier(_Model):
    type: Literal["command"] = "command"
    command: CommandLine
    timeout: PositiveDuration = 30.0
    env: Annotated[list[str] | dict[str, str], AfterValidator(_env_names)] = Field(
        default_factory=list, repr=False
    )
    """Variables the command gets besides PATH, HOME, LANG, LC_*, TZ and its WATCHER_* ones:
    names passed on from the worker's environment, or a map of values."""
    deliver_within: PositiveDuration = DEFAULT_DELIVER_WITHIN
    title: MessageTemplate | None = None
    body: MessageTemplate | None = None


def _apprise_url(value: str) -> str:
    url = value.strip()
    problem = "it is empty" if not url else apprise_url_problem(url)
    if problem:
        raise ValueError(f"invalid Apprise URL {show(shown_apprise_url(url))}: {problem}")
    return url


def _some_urls(urls: list[str]) -> list[str]:
    if not urls:
        raise ValueError(f"expected at least one Apprise URL, e.g. {APPRISE_EXAMPLES}")
    return urls


AppriseUrls = Annotated[
    list[Annotated[str, AfterValidator(_apprise_url)]],
    BeforeValidator(_string_list),
    AfterValidator(_some_urls),
]


class AppriseNotifier(_Model):
    """Sends to every service apprise knows (Slack, Discord, Telegram, email, ntfy, ...)."""

    type: Literal["apprise"] = "apprise"
    urls: AppriseUrls = Field(repr=False)
    timeout: PositiveDuration = 30.0
    deliver_within: PositiveDuration = DEFAULT_DELIVER_WITHIN
    title: MessageTemplate | None = None
    body: MessageTemplate | None = None

    def shown_urls(self) -> list[str]:
        """The URLs as they may be shown (`shown_apprise_url`)."""
        return [shown_apprise_url(url) for url in self.urls]

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        yield "urls", self.shown_urls()


NotifierConfig = Annotated[
    ConsoleNotifier | WebhookNotifier | CommandNotifier | AppriseNotifier,
    Field(discriminator="type"),
]
_NOTIFIER_MODELS: dict[str, type[_Model]] = {
    "console": ConsoleNotifier,
    "webhook": WebhookNotifier,
    "command": CommandNotifier,
    "apprise": AppriseNotifier,
}

_TEMPLATE_FIELDS = frozenset(
    {"id", "url", "method", "headers", "timeout", "options", "check", "notify", "secret_headers"}
)


MAX_FILTERS = 64
_DEFAULTS_PROBE = {"id": "defaults", "url": "http://defaults"}
"""How `defaults` is validated alone: its options are checked in each resource instead,
against that resource's check."""


def _filter_list(value: Any) -> Any:
    """`filters: html2text` (one filter) stands for a list of one; at most MAX_FILTERS."""
    if isinstance(value, str | dict):
        return [value]
    if isinstance(value, list) and len(value) > MAX_FILTERS:
        raise ValueError(f"at most {MAX_FILTERS} filters (got {len(value)})")
    return value


def _filter_entry(value: Any) -> Any:
    from watcher.filters import parse_filter

    return parse_filter(value).canonical()


FilterChain = Annotated[
    list[Annotated[str | dict[str, Any], BeforeValidator(_filter_entry)]],
    BeforeValidator(_filter_list),
]


def _is_defaults_probe(info: ValidationInfo) -> bool:
    return all(info.data.get(key) == value for key, value in _DEFAULTS_PROBE.items())


def _declared_options(check: str, options: dict[str, Any]) -> None:
    """Validate `options` against what `check` declares (`watcher.check.declare_options`);
    a ValidationError located at each option, an unknown one with "did you mean"."""
    from watcher.registry import options_of

    model = options_of(check)
    if model is None:
        return
    try:
        model.model_validate(options)
    except ValidationError as exc:
        known = tuple(model.model_fields)
        errors = [_option_error(error, check, known) for error in exc.errors(include_url=False)]
        raise ValidationError.from_exception_data("options", errors) from None


def _option_error(error: ErrorDetails, check: str, known: tuple[str, ...]) -> InitErrorDetails:
    if error["type"] != "extra_forbidden":
        details = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
        if "ctx" in error:
            details["ctx"] = error["ctx"]
        return details
    name = str(error["loc"][-1])
    suggestion = _did_you_mean(name, known)
    if suggestion:
        hint = f" (did you mean `{suggestion}`?)"
    else:
        hint = f"; expected one of: {', '.join(known)}" if known else "; it takes none"
    message = f"unknown option `{name}` for check `{check}`{hint}"
    return InitErrorDetails(
        type="value_error", loc=error["loc"], input=error["input"], ctx={"error": message}
    )


def _uses_filters(check: str) -> bool:
    """Whether `check` applies `filters:`; a check that declares no options may."""
    from watcher.registry import options_of

    model = options_of(check)
    return model is None or bool(getattr(model, "uses_filters", False))


_IDENTITY_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


class ResourceConfig(_Model):
    """One watched resource, with every default applied; durations are in seconds."""

    id: ResourceId
    url: HttpUrl
    check: CheckName = "etag"
    # Fields are validated in this order: each schedule field's validator sees those above it.
    min_every: PositiveDuration = MIN_EVERY
    every: PositiveDuration | None = None
    tz: TimeZone = "UTC"
    cron: str | None = None
    jitter: NonNegativeDuration = 0.0
    cadence: Literal["server", "fixed"] = "server"
    """server: a server's word on freshness (Cache-Control, Expires) holds runs back, up to
    `max_every`; fixed: the schedule alone decides."""
    max_every: PositiveDuration = DEFAULT_MAX_EVERY
    alert_after: int = Field(default=0, ge=0)
    """Runs in a row that gave up before the notifiers hear "down" (0: never)."""
    remind_every: NonNegativeDuration = 0.0
    """While down, say so again this often (0: once)."""
    expect_change_within: NonNegativeDuration = 0.0
    """No change for this long: the notifiers hear "stale" once (0: never)."""
    method: Method = "GET"
    headers: Headers = Field(default_factory=dict, repr=False)
    secret_headers: HeaderNameList = Field(default_factory=list)
    timeout: PositiveDuration = 10.0
    notify: NameList = Field(default_factory=lambda: ["console"])
    options: Options = Field(default_factory=dict)
    filters: FilterChain = Field(default_factory=list)
    """The `watcher.filters` chain, each entry in its canonical form; it reaches the check
    in its options, under `filters`."""
    enabled: bool = True
    overlap: bool = False
    _from_env: dict[str, str] = PrivateAttr(default_factory=dict)
    """Fields stored as written, ``${VAR}`` references and all (see `watcher.secrets`)."""

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        data = _drop_empty(data)
        if isinstance(data, dict) and "every" not in data and "cron" not in data:
            data["every"] = DEFAULT_EVERY
        return data

    @field_validator("every")
    @classmethod
    def _check_every(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None:
            _every_above_floor(value, info.data.get("min_every", MIN_EVERY))
            _workable_schedule(every=value)
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("every") is not None:
            raise ValueError("`every` and `cron` are both set; keep one of them")
        return _cron_expression(value, info.data.get("tz", "UTC"))

    @field_validator("jitter")
    @classmethod
    def _check_jitter(cls, value: float, info: ValidationInfo) -> float:
        every, cron = info.data.get("every"), info.data.get("cron")
        if every is not None or cron is not None:
            _workable_schedule(every=every, cron=cron, tz=info.data.get("tz"), jitter=value)
        return value

    @field_validator("max_every")
    @classmethod
    def _check_max_every(cls, value: float, info: ValidationInfo) -> float:
        every = info.data.get("every")
        if every is not None and value < every:
            raise ValueError(
                f"`max_every` ({format_duration(value)}) is shorter than `every`"
                f" ({format_duration(every)}): runs cannot be both"
            )
        return value

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        check = info.data.get("check")
        if value and check is not None and not _is_defaults_probe(info):
            _declared_options(check, value)
        return value

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        check = info.data.get("check")
        if not value or check is None or _is_defaults_probe(info):
            return value
        if not _uses_filters(check):
            raise ValueError(
                f"check `{check}` does not apply filters (the content and etag checks do)"
            )
        return value

    def identity(self) -> str:
        """A short hash of what the stored state depends on: url, method, check, the request
        headers, the check's options and the filters (a new regex or Accept makes old
        validators moot). Secrets count as stored, as references: a rotated token keeps the
        state."""
        stored = secrets.with_references(
            {"url": self.url, "headers": self.headers}, self._references()
        )
        depends_on = [stored["url"], self.method, self.check, stored["headers"], self.options]
        if self.filters:  # only when set: resources without filters keep their identity
            depends_on.append(self.filters)
        payload = _IDENTITY_JSON.encode(depends_on)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def template(self) -> dict[str, Any]:
        """Everything a check run needs, as JSON-serialisable data; secrets written as
        ``${VAR}`` stay references, listed under ``from_env``, for the worker to expand.
        Fields at their default value are left out (`TEMPLATE_DEFAULTS`): stored in every
        scheduler, a short template keeps an idle resource small in Redis."""
        data = self.model_dump(mode="json", include=set(_TEMPLATE_FIELDS), exclude_defaults=True)
        # Stored only when not the default, so resources synced before them stay unchanged.
        if self.cadence != "server":
            data["cadence"] = self.cadence
        if self.max_every != DEFAULT_MAX_EVERY:
            data["max_every"] = self.max_every
        for alert in ("alert_after", "remind_every", "expect_change_within"):
            if getattr(self, alert):
                data[alert] = getattr(self, alert)
        if self.filters:  # the check reads them from its options (`watcher.filters`)
            data["options"] = {**data.get("options", {}), "filters": list(self.filters)}
        return secrets.with_references(data, self._references())

    def _references(self) -> dict[str, str]:
        """`_from_env`, read without pydantic's lookup of private attributes, which raises
        and catches an exception on every read (a second per 100,000 resources synced)."""
        private = self.__pydantic_private__ or {}
        references: dict[str, str] = private.get("_from_env", {})
        return references

    def masked_headers(self) -> dict[str, str]:
        """The headers with secret values (Authorization, Cookie, secret_headers) masked."""
        return mask_headers(self.headers, self.secret_headers)


TEMPLATE_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in ResourceConfig.model_fields.items()
    if name in _TEMPLATE_FIELDS and not field.is_required()
}
"""What a template field is when left out (`ResourceConfig.template`)."""
RESOURCE_KEYS = tuple(ResourceConfig.model_fields)
DEFAULTS_KEYS = tuple(key for key in RESOURCE_KEYS if key not in ("id", "url"))


def _rate(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError(f"invalid rate {show(value)}; expected e.g. 5/s, 30/m or 1/10s")
    return parse_rate(value)


def _host_key(value: str) -> str:
    if problem := host_key_problem(value):
        raise ValueError(problem)
    return value


class HostConfig(_Model):
    """One entry of `hosts:`; a field it leaves out comes from `default`."""

    rate: Annotated[float, BeforeValidator(_rate)] | None = None
    """Seconds between requests at the sustained rate."""
    burst: int | None = Field(default=None, ge=1, le=100_000)
    concurrency: int | None = Field(default=None, ge=0, le=100_000)
    """0: no limit."""


def _budgets(hosts: Mapping[str, HostConfig]) -> dict[str, Budget]:
    default = hosts.get("default", HostConfig())
    budgets = {}
    for key in {"default", *hosts}:
        entry = hosts.get(key, default)
        rate = entry.rate if entry.rate is not None else default.rate
        candidates = (entry.concurrency, default.concurrency, DEFAULT_CONCURRENCY)
        concurrency = next(c for c in candidates if c is not None)
        budgets[key] = Budget(
            interval_ms=max(1, round(rate * 1000)) if rate else 0,
            burst=entry.burst or default.burst or 1,
            concurrency=concurrency,
        )
    return budgets


def _listen(value: str) -> str:
    from watcher.metrics import parse_listen  # pure; imported late: prometheus-client is not

    parse_listen(value)
    return value


class MetricsConfig(_Model):
    """`metrics:`: what `--metrics` and `--metrics-per-resource` say, in the YAML (the
    command line wins)."""

    listen: Annotated[str, AfterValidator(_listen)]
    per_resource: bool = False


class Config(_Model):
    redis: RedisUrl | None = None
    """None: use the embedded Redis (``WATCHER_REDIS_URL`` is the CLI's business)."""
    queue: QueueName = "watcher"
    history_limit: int = Field(default=10_000, gt=0, le=10_000_000)
    """How many changes the history keeps (the `changes` stream's cap)."""
    hosts: dict[Annotated[str, AfterValidator(_host_key)], HostConfig] = Field(default_factory=dict)
    notifiers: dict[str, NotifierConfig] = Field(default_factory=dict, validate_default=True)
    """Every defined notifier, including the implicit ``console``."""
    metrics: MetricsConfig | None = None
    resources: list[ResourceConfig] = Field(default_factory=list)
    source: str = "watcher.yaml"
    _source_map: SourceMap | None = PrivateAttr(default=None)

    @field_validator("notifiers")
    @classmethod
    def _implicit_console(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {"console": ConsoleNotifier(), **value}

    def budgets(self) -> dict[str, Budget]:
        """Every host budget the queue keeps: `default` (concurrency 8 unless it says
        otherwise) and each entry of `hosts:`, completed from `default`."""
        return _budgets(self.hosts)

    def error(self, path: Path, message: str) -> ConfigError:
        """A ConfigError at ``path`` in the file, e.g. ``("resources", 2, "check")``.

        For problems found after loading, such as a check name that is not registered.
        """
        source_map = self._source_map or SourceMap(self.source)
        return ConfigError([source_map.issue(path, message)], self.source)


# ---------------------------------------------------------------------------- validation


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key_message(key: str, known: tuple[str, ...]) -> str:
    suggestion = _did_you_mean(key, known)
    if suggestion:
        return f"unknown key `{key}` (did you mean `{suggestion}`?)"
    if known:
        return f"unknown key `{key}`; expected one of: {', '.join(known)}"
    return f"unknown key `{key}`"


_EXPECTED = {
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "string_type": "expected text",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
}


_M = TypeVar("_M", bound=BaseModel)


class _Validator:
    """Runs pydantic and turns its errors into positioned issues."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.inherited: dict[int, set[str]] = {}
        """Per resource index, the keys that came from `defaults`."""

    def validate(self, model: type[_M], data: Any, prefix: Path = ()) -> _M | None:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                self.report_error(error, prefix)
            return None

    def report_error(self, error: ErrorDetails, prefix: Path) -> None:
        path = self._normalise((*prefix, *error["loc"]))
        key_error = bool(path) and path[-1] == "[key]"
        if key_error:
            path = path[:-1]
        at = self._origin(path)
        if self.report.from_env_failure(path) or self.report.from_env_failure(at):
            return
        kind = error["type"]
        message = self._message(error, path)
        if at != path:
            message += " (set in defaults)"
        if kind == "missing":
            self.report.add(path, message, at=at[:-1])
        elif kind.startswith("union_tag"):
            self.report.add((*path, "type"), message, at=(*at, "type"))
        else:
            self.report.add(path, message, key=key_error or kind == "extra_forbidden", at=at)

    def _normalise(self, path: Path) -> Path:
        # A discriminated union puts the tag in the location: notifiers.NAME.webhook.url
        if len(path) >= 3 and path[0] == "notifiers" and path[2] in _NOTIFIER_MODELS:
            path = path[:2] + path[3:]
        return path

    def _origin(self, path: Path) -> Path:
        """Where a merged resource value was written: in the resource or in `defaults`."""
        if len(path) >= 3 and path[0] == "resources":
            index = path[1]
            if isinstance(index, int) and path[2] in self.inherited.get(index, set()):
                return ("defaults", *path[2:])
        return path

    def _message(self, error: ErrorDetails, path: Path) -> str:
        kind, ctx = error["type"], error.get("ctx") or {}
        if kind == "extra_forbidden":
            return _unknown_key_message(str(path[-1]), self._known_keys(path[:-1]))
        if kind == "missing":
            return f"missing required key `{path[-1]}`"
        if kind in ("value_error", "assertion_error") and "error" in ctx:
            return str(ctx["error"])
        if kind == "union_tag_invalid":
            tag = str(ctx.get("tag", ""))
            suggestion = _did_you_mean(tag, _NOTIFIER_MODELS)
            hint = f" (did you mean `{suggestion}`?)" if suggestion else ""
            return f"unknown notifier type {show(tag)}{hint}; expected one of {_notifier_types()}"
        if kind == "union_tag_not_found":
            return f"missing key `type`; expected one of {_notifier_types()}"
        if kind == "greater_than_equal":
            message = f"expected a number >= {ctx.get('ge')}"
        else:
            message = _EXPECTED.get(kind) or error["msg"].replace("Input should be", "expected")
        if "headers" in path:  # the value may be a secret
            return message
        message = f"{message} (got {show(error.get('input'))})"
        if kind == "string_type" and isinstance(error.get("input"), int | float):
            message += "; quote it to make it text"
        return message

    def _known_keys(self, parent: Path) -> tuple[str, ...]:
        if parent == ():
            return TOP_LEVEL_KEYS
        if parent == ("defaults",):
            return DEFAULTS_KEYS
        if parent == ("metrics",):
            return tuple(MetricsConfig.model_fields)
        if len(parent) == 2 and parent[0] == "resources":
            return RESOURCE_KEYS
        if len(parent) == 2 and parent[0] == "hosts":
            return tuple(HostConfig.model_fields)
        if len(parent) == 2 and parent[0] == "notifiers":
            definition = self.report.notifiers.get(str(parent[1]))
            kind = definition.get("type") if isinstance(definition, dict) else None
            model = _NOTIFIER_MODELS.get(kind) if isinstance(kind, str) else None
            return tuple(model.model_fields) if model else ()
        return ()


def _notifier_types() -> str:
    return ", ".join(_NOTIFIER_MODELS)


# ---------------------------------------------------------------------------- the pipeline


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file; raises ConfigError listing every problem.

    `env` (default: the process's) gives the ``${VAR}`` values and the loader's limits.
    """
    source = os.fsdecode(path)
    limits = _limits(source, os.environ if env is None else env)
    try:
        with open(source, "rb") as file:
            raw = file.read(limits.max_bytes + 1)  # no more: the file may be huge
        _check_size(source, raw, limits)
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        issue = ConfigIssue(source, None, None, "", f"cannot read: {reason}")
        raise ConfigError([issue], source) from None
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError([ConfigIssue(source, None, None, "", message)], source) from None
    with collector_paused():
        return parse_config(text, source, env)


def _limits(source: str, env: Mapping[str, str]) -> Limits:
    try:
        return Limits.from_env(env)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source) from None


def _check_size(source: str, data: str | bytes, limits: Limits) -> None:
    """ConfigError when `data` is over the size limit, at the line where it crosses it."""
    limit = limits.max_bytes
    if len(data) <= limit:
        return
    head = data[:limit] if isinstance(data, str) else data[:limit].decode("utf-8", "replace")
    line = head.count("\n") + 1
    column = len(head) - head.rfind("\n")
    message = (
        f"the file is larger than {format_size(limit)} (the limit; {BYTES_VARIABLE} raises it);"
        " it crosses the limit here"
    )
    raise ConfigError([ConfigIssue(source, line, column, "", message)], source)


def parse_config(
    text: str, filename: str = "watcher.yaml", env: Mapping[str, str] | None = None
) -> Config:
    """Validate configuration text; ``filename`` is used in messages and as ``Config.source``."""
    env = os.environ if env is None else env
    limits = _limits(filename, env)
    _check_size(filename, text, limits)
    report = Report(filename)
    data = load_yaml(text, report, limits)
    data = substitute(data, (), env, report)
    root = _root_mapping(data, report)
    listed = _listed_resources(root.pop("resources_from", None), filename, env, report)
    if listed:
        written = root.get("resources")
        root["resources"] = [*(written if isinstance(written, list) else []), *listed]
    resources = root.get("resources")
    report.map.ids = _resource_ids(resources)
    if isinstance(root.get("notifiers"), dict):
        report.notifiers = root["notifiers"]

    validator = _Validator(report)
    defaults = _checked_defaults(root.pop("defaults", None), validator)
    _check_duplicate_ids(resources, report)
    _check_notifier_references(defaults, resources, report)
    if isinstance(resources, list):
        copies = _listed_copies(defaults, listed) if listed else None
        written = resources[: len(resources) - len(listed)] if copies is not None else resources
        merged = [_merge_defaults(defaults, item) for item in written]
        root["resources"] = [item for item, _ in merged] + (copies or [])
        validator.inherited = {i: inherited for i, (_, inherited) in enumerate(merged)}

    root.setdefault("queue", queue_name_for(filename))
    config = validator.validate(Config, {**root, "source": filename})
    if report.problems or config is None:
        raise report.error()
    config._source_map = report.map
    literal = _keep_references(config, resources, report, env)
    if literal:
        _warn_literal_secrets(filename, literal, report.map)
    return config


def _listed_resources(
    value: Any, filename: str, env: Mapping[str, str], report: Report
) -> list[dict[str, str]]:
    """The resources of `resources_from:` (watcher.url_list), as if written in `resources`;
    list files are named relative to the YAML's directory."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        report.add(("resources_from",), "expected a file name, or a list of them")
        return []
    from watcher.url_list import read_url_list, resource_id_for

    def problem(url: str) -> str | None:
        said = _url_problem(url, HTTP_SCHEMES)
        return None if said is None else f"invalid URL {show(url)}: {said}"

    base = os.path.dirname(os.path.abspath(filename))
    urls: dict[str, None] = {}
    for name in names:
        for url in read_url_list(pathlib.Path(base, name), problem, env):
            urls.setdefault(url)
    return [{"id": resource_id_for(url), "url": url} for url in urls]


def _listed_copies(
    defaults: dict[str, Any], listed: list[dict[str, str]]
) -> list[ResourceConfig] | None:
    """Resources from a URL list differ only in their id and URL, both checked already (by
    `read_url_list` and `resource_id_for`): the first is validated with the defaults, and the
    others are copies of it with their own id and URL, a fraction of pydantic's time for a
    million. None when that one does not validate: then all are, for the errors to be told."""
    try:
        prototype = ResourceConfig.model_validate(_merge_defaults(defaults, listed[0])[0])
    except ValidationError:
        return None
    return [prototype.model_copy(update={"id": item["id"], "url": item["url"]}) for item in listed]


def _keep_references(
    config: Config, written_resources: Any, report: Report, env: Mapping[str, str]
) -> list[Path]:
    """Marks each resource's secrets written as ``${VAR}`` to be stored as written; returns
    where secrets are written literally (stored as they are)."""
    literal: dict[Path, None] = {}
    for i, resource in enumerate(config.resources):
        written = written_resources[i] if isinstance(written_resources, list) else {}
        own = written.get("headers") if isinstance(written, dict) else None
        kept: dict[str, str] = {}
        for name in resource.headers:
            if not is_secret(name, resource.secret_headers):
                continue
            where: Path = (
                ("resources", i, "headers", name)
                if isinstance(own, dict) and name in own
                else ("defaults", "headers", name)
            )
            text = report.written.get(where)
            if text is not None:
                kept[secrets.header_field(name)] = text.strip()
            else:
                literal[where] = None
        written_url = report.written.get(("resources", i, "url"))
        stored_url = secrets.url_keeping_references(written_url, env) if written_url else None
        if stored_url is not None:
            kept[secrets.URL_FIELD] = stored_url
        elif secrets.has_user_info(resource.url):
            literal[("resources", i, "url")] = None
        resource._from_env = kept
    return list(literal)


SHOWN_LITERAL_SECRETS = 5


def _warn_literal_secrets(source: str, paths: list[Path], source_map: SourceMap) -> None:
    shown = []
    for path in paths[:SHOWN_LITERAL_SECRETS]:
        where = source_map.locate(path, key=True)
        shown.append(source_map.describe(path) + (f" (line {where[0]})" if where else ""))
    if len(paths) > SHOWN_LITERAL_SECRETS:
        shown.append(f"and {len(paths) - SHOWN_LITERAL_SECRETS} more")
    log.warning(
        "%s: secrets written literally are stored in Redis as written: %s; write them as"
        " ${VAR} references, which are stored as such and expanded by each worker",
        source,
        ", ".join(shown),
    )


def _root_mapping(data: Any, report: Report) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        keys = ", ".join(TOP_LEVEL_KEYS)
        report.add((), f"expected a mapping with keys {keys} (got {show(data)})")
        return {}
    for key in [key for key in data if key not in TOP_LEVEL_KEYS]:
        report.add((key,), _unknown_key_message(key, TOP_LEVEL_KEYS), key=True)
        del data[key]
    return data


def _resource_ids(resources: Any) -> dict[int, str]:
    if not isinstance(resources, list):
        return {}
    return {
        i: item["id"]
        for i, item in enumerate(resources)
        if isinstance(item, dict) and isinstance(item.get("id"), str)
    }


def _checked_defaults(raw: Any, validator: _Validator) -> dict[str, Any]:
    """The valid part of `defaults`; its problems are reported once, at `defaults`."""
    report = validator.report
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        report.add(("defaults",), f"expected a mapping (got {show(raw)})")
        return {}
    rejected = {key for key in ("id", "url") if key in raw}
    for key in rejected:
        report.add(("defaults", key), f"`{key}` cannot be set in defaults", key=True)
    candidate = {key: value for key, value in raw.items() if key not in rejected}
    try:
        ResourceConfig.model_validate({**candidate, "id": "defaults", "url": "http://defaults"})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            validator.report_error(error, ("defaults",))
            if error["loc"]:
                rejected.add(str(error["loc"][0]))
    rejected |= {str(path[1]) for path in report.env_failed if path[:1] == ("defaults",)}
    return {key: value for key, value in candidate.items() if key not in rejected}


def _merge_defaults(defaults: dict[str, Any], resource: Any) -> tuple[Any, set[str]]:
    """The resource with defaults applied, and the keys it inherited.

    `every` and `cron` are one setting: a resource that sets either ignores both defaults.
    `secret_headers` are combined, so that a default secret header stays masked.
    """
    if not isinstance(resource, dict):
        return resource, set()
    own = {key: value for key, value in resource.items() if value is not None}
    merged = dict(defaults)
    if "every" in own or "cron" in own:
        merged.pop("every", None)
        merged.pop("cron", None)
    for key, value in own.items():
        base = merged.get(key)
        if key == "headers" and isinstance(base, dict) and isinstance(value, dict):
            lowered = {name.lower() for name in value}
            merged[key] = {n: v for n, v in base.items() if n.lower() not in lowered} | value
        elif key == "options" and isinstance(base, dict) and isinstance(value, dict):
            merged[key] = base | value
        elif key == "secret_headers" and isinstance(base, list) and isinstance(value, list):
            merged[key] = list(dict.fromkeys([*base, *value]))
        else:
            merged[key] = value
    return merged, {key for key in merged if key not in own}


def _check_duplicate_ids(resources: Any, report: Report) -> None:
    first_index: dict[str, int] = {}
    for i, resource_id in _resource_ids(resources).items():
        if resource_id not in first_index:
            first_index[resource_id] = i
            continue
        first = report.map.locate(("resources", first_index[resource_id], "id"))
        where = f" (first defined at line {first[0]})" if first else ""
        report.add(("resources", i, "id"), f"duplicate id {show(resource_id)}{where}")


def _check_notifier_references(defaults: dict[str, Any], resources: Any, report: Report) -> None:
    names = {"console", *report.notifiers}
    _check_notify(("defaults", "notify"), defaults.get("notify"), names, report)
    for i, resource in enumerate(resources if isinstance(resources, list) else []):
        if isinstance(resource, dict):
            _check_notify(("resources", i, "notify"), resource.get("notify"), names, report)


def _check_notify(path: Path, value: Any, names: set[str], report: Report) -> None:
    if isinstance(value, str):
        entries: list[tuple[Path, Any]] = [(path, value)]
    elif isinstance(value, list):
        entries = [((*path, j), name) for j, name in enumerate(value)]
    else:
        return
    defined = ", ".join(sorted(names))
    for entry_path, name in entries:
        if not isinstance(name, str) or name in names or report.from_env_failure(entry_path):
            continue
        suggestion = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
        hint = f" (did you mean `{suggestion[0]}`?)" if suggestion else ""
        report.add(
            entry_path,
            f"unknown notifier {show(name)}{hint}; define it under `notifiers`"
            f" (defined: {defined})",
        )
