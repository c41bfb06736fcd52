"""The ``tls`` check: how many days until the certificate of the URL's host expires.

It connects to the URL's host and port (443 unless the URL says otherwise), completes a TLS
handshake and reads the certificate the server presents; no HTTP request is made. A change
is reported when the days left cross ``warn_days`` (default 14), either way, and when the
certificate is renewed (another serial number or expiry date).

Options: ``warn_days``; ``verify`` (default true: the chain and the host name are verified,
and a certificate that fails, expired ones included, fails the run with the reason; false
reads whatever the server presents); ``ca_file`` (a PEM file of the CAs to trust instead of
the system's, for a private CA).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import httpx
from cryptography import x509
from pydantic import Field

from watcher.check import (
    CheckContext,
    CheckFailed,
    CheckOptions,
    CheckResult,
    TransientCheckError,
    declare_options,
)

DEFAULT_PORT = 443
DEFAULT_WARN_DAYS = 14
MAX_NAME_CHARS = 256
SECONDS_PER_DAY = 86400
# What a renewal is shown as, old → new.
RENEWAL_FIELDS = ("not_after", "serial")


class TlsOptions(CheckOptions):
    warn_days: int = Field(default=DEFAULT_WARN_DAYS, ge=0, le=3650)
    """Days before the expiry from which the certificate counts as expiring."""
    verify: bool = True
    ca_file: str | None = None


@declare_options(TlsOptions)
async def check(ctx: CheckContext) -> CheckResult:
    options = ctx.resource.options
    host, port = address(ctx.resource.url)
    context = _context(bool(options.get("verify", True)), options.get("ca_file"))
    der = await peer_certificate(host, port, context, ctx.resource.timeout)
    warn_days = int(options.get("warn_days", DEFAULT_WARN_DAYS))
    new = describe(der, time.time(), warn_days)
    return _result(ctx.state, new, warn_days)


def address(url: str) -> tuple[str, int]:
    """The host and port a URL's TLS is served on."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CheckFailed(f"invalid URL {url}: {exc}") from None
    return parsed.host, parsed.port or DEFAULT_PORT


async def peer_certificate(host: str, port: int, context: ssl.SSLContext, timeout: float) -> bytes:
    """The DER certificate `host` presents in a TLS handshake on `port`."""
    try:
        _, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host, ssl_handshake_timeout=timeout
        )
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailed(f"certificate verify failed: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise CheckFailed(f"TLS handshake with {host}:{port} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise TransientCheckError(
            f"cannot connect to {host}:{port}: {exc.strerror or exc}"
        ) from None
    try:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if not der:
        raise CheckFailed(f"{host}:{port} presented no certificate")
    return bytes(der)


def describe(der: bytes, now: float, warn_days: int) -> dict[str, Any]:
    """The state for a certificate: its expiry, serial, names and days left at `now`."""
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CheckFailed(f"invalid certificate: {exc}") from None
    not_after = certificate.not_valid_after_utc
    days_left = math.floor((not_after.timestamp() - now) / SECONDS_PER_DAY)
    return {
        "not_after": not_after.isoformat(),
        "serial": format(certificate.serial_number, "X"),
        "subject": certificate.subject.rfc4514_string()[:MAX_NAME_CHARS],
        "issuer": certificate.issuer.rfc4514_string()[:MAX_NAME_CHARS],
        "days_left": days_left,
        "expiring": days_left < warn_days,
    }


@lru_cache(maxsize=64)
def _context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """One context per setting: loading a trust store costs more than a handshake."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CheckFailed(f"cannot load ca_file {ca_file!r}: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _result(old: dict[str, Any], new: dict[str, Any], warn_days: int) -> CheckResult:
    if not old:
        return CheckResult(False, new, f"baseline: {_expiry(new)}", baseline=True)
    renewed = any(old.get(key) != new[key] for key in RENEWAL_FIELDS)
    crossed = bool(old.get("expiring")) != new["expiring"]
    if not (renewed or crossed):
        # days_left moves every day: stored, not reported.
        return CheckResult(False, new, f"unchanged: {_expiry(new)}")
    shown = ("days_left", "expiring", *RENEWAL_FIELDS)
    return CheckResult(
        True,
        new,
        _change_summary(old, new, renewed, warn_days),
        old={key: old.get(key) for key in shown},
        new={key: new[key] for key in shown},
    )


def _change_summary(old: dict[str, Any], new: dict[str, Any], renewed: bool, warn_days: int) -> str:
    if renewed:
        return (
            f"certificate renewed: expires {_date(old.get('not_after'))} →"
            f" {_date(new['not_after'])} (serial {old.get('serial')} → {new['serial']});"
            f" {_days(new['days_left'])} left"
        )
    if new["expiring"]:
        return f"certificate expiring: {_expiry(new)}, under warn_days {warn_days}"
    return f"certificate no longer expiring: {_expiry(new)}"


def _expiry(state: dict[str, Any]) -> str:
    days = state["days_left"]
    when = _date(state["not_after"])
    if days < 0:
        ago = -days - 1  # days_left is rounded down: -3 is 2 whole days ago and some
        return f"certificate expired {_days(ago) + ' ago' if ago else 'today'} ({when})"
    return f"certificate expires in {_days(days)} ({when})"


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def _date(iso: Any) -> str:
    if not isinstance(iso, str):
        return "unknown"
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return iso
