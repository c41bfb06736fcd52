"""The ``tls`` check against a real TLS origin on 127.0.0.1, whose certificates the test
makes with trustme: the days left, a renewal, crossing ``warn_days``, and what fails."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from checks import tls
from watcher.check import CheckContext, CheckFailed, TransientCheckError
from watcher.config import parse_config

MakeCtx = Callable[..., CheckContext]
DAY = 86400.0


class TlsOrigin:
    """Completes TLS handshakes on 127.0.0.1 with the certificate it serves now, then hangs
    up; `serve` swaps the certificate (a renewal)."""

    def __init__(self, certificate: trustme.LeafCert) -> None:
        self._context = self._context_for(certificate)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.handshakes = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _context_for(certificate: trustme.LeafCert) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        certificate.configure_cert(context)
        return context

    def serve(self, certificate: trustme.LeafCert) -> None:
        self._context = self._context_for(certificate)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with (
                contextlib.suppress(OSError),
                connection,
                self._context.wrap_socket(connection, server_side=True),
            ):
                self.handshakes += 1

    def close(self) -> None:
        self._listener.close()


def certificate(ca: trustme.CA, days: float, *names: str) -> trustme.LeafCert:
    return ca.issue_cert(*(names or ("127.0.0.1",)), not_after=_in_days(days))


def _in_days(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def origin(ca: trustme.CA) -> Iterator[TlsOrigin]:
    server = TlsOrigin(certificate(ca, 90))
    yield server
    server.close()


def ctx_for(
    make_ctx: MakeCtx, origin: TlsOrigin, state: dict[str, object], **options: object
) -> CheckContext:
    return make_ctx(state, url=origin.url, timeout=5.0, options=options)


async def test_expiry_then_a_renewal(
    make_ctx: MakeCtx, origin: TlsOrigin, ca: trustme.CA, ca_file: str
) -> None:
    first = await tls.check(ctx_for(make_ctx, origin, {}, ca_file=ca_file))
    assert first.baseline and not first.changed
    assert first.summary.startswith("baseline: certificate expires in 89 days (")
    assert first.state["days_left"] == 89 and first.state["expiring"] is False
    expires = datetime.fromisoformat(str(first.state["not_after"]))
    assert abs(expires - _in_days(90)) < timedelta(minutes=1)

    same = await tls.check(ctx_for(make_ctx, origin, first.state, ca_file=ca_file))
    assert not same.changed and same.summary.startswith("unchanged: certificate expires in")

    origin.serve(certificate(ca, 180))
    renewed = await tls.check(ctx_for(make_ctx, origin, same.state, ca_file=ca_file))
    assert renewed.changed
    assert renewed.summary.startswith("certificate renewed: expires ")
    assert renewed.old is not None and renewed.new is not None
    assert renewed.old["serial"] != renewed.new["serial"]
    assert (renewed.old["days_left"], renewed.new["days_left"]) == (89, 179)
    assert origin.handshakes == 3


async def test_crossing_warn_days_is_a_change_both_ways(
    make_ctx: MakeCtx,
    origin: TlsOrigin,
    ca: trustme.CA,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    baseline = await tls.check(ctx_for(make_ctx, origin, {}, ca_file=ca_file))
    now = time.time()
    monkeypatch.setattr(tls.time, "time", lambda: now + 80 * DAY)  # 9-10 days left
    soon = await tls.check(ctx_for(make_ctx, origin, baseline.state, ca_file=ca_file))
    assert soon.changed and soon.state["expiring"] is True
    assert soon.summary.startswith("certificate expiring: certificate expires in 9 days")
    assert soon.summary.endswith("under warn_days 14")
    still = await tls.check(ctx_for(make_ctx, origin, soon.state, ca_file=ca_file))
    assert not still.changed  # a day less is stored, not reported

    wider = await tls.check(ctx_for(make_ctx, origin, {}, ca_file=ca_file, warn_days=5))
    assert wider.state["expiring"] is False  # warn_days is the resource's own


async def test_an_expired_certificate(
    make_ctx: MakeCtx, origin: TlsOrigin, ca: trustme.CA, ca_file: str
) -> None:
    origin.serve(certificate(ca, -2))
    with pytest.raises(CheckFailed, match="certificate verify failed: certificate has expired"):
        await tls.check(ctx_for(make_ctx, origin, {}, ca_file=ca_file))
    unverified = await tls.check(ctx_for(make_ctx, origin, {}, verify=False))
    assert unverified.state["days_left"] < 0 and unverified.state["expiring"] is True
    assert "certificate expired 2 days ago" in unverified.summary


async def test_what_fails(
    make_ctx: MakeCtx, origin: TlsOrigin, ca: trustme.CA, ca_file: str
) -> None:
    with pytest.raises(CheckFailed, match="certificate verify failed"):
        await tls.check(ctx_for(make_ctx, origin, {}))  # the system's CAs do not know it
    origin.serve(certificate(ca, 30, "other.example"))
    with pytest.raises(CheckFailed, match="certificate verify failed: IP address mismatch"):
        await tls.check(ctx_for(make_ctx, origin, {}, ca_file=ca_file))
    with pytest.raises(CheckFailed, match="cannot load ca_file"):
        await tls.check(ctx_for(make_ctx, origin, {}, ca_file="/nonexistent/ca.pem"))
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    refused = make_ctx({}, url=f"https://127.0.0.1:{port}/", timeout=5.0)
    with pytest.raises(TransientCheckError, match=f"cannot connect to 127.0.0.1:{port}"):
        await tls.check(refused)


def test_tls_is_a_registered_check_with_checked_options() -> None:
    text = (
        "resources:\n  - id: cert\n    url: https://example.org/\n    check: tls\n"
        "    options: {warn_days: 30}\n"
    )
    (resource,) = parse_config(text, env={}).resources
    assert resource.options == {"warn_days": 30}
    assert tls.address("https://example.org/") == ("example.org", 443)
    assert tls.address("https://127.0.0.1:8443/x") == ("127.0.0.1", 8443)
