"""A real HTTP origin for the end-to-end tests, on 127.0.0.1 in a background thread.

    with Origin(etag='"v1"') as origin:
        ...origin.url...
        origin.set(etag='"v2"', body=b"new")   # at any time, from the test
        origin.set(hang=True)                  # requests from now on block until release()
        origin.set(die="mid-body")             # answers cut off half-way through the body
        origin.requests                        # every request: headers, time, what was answered

What it answers to GET/HEAD, unless told otherwise:
- ``If-None-Match`` matching the current ETag (weak comparison, lists, ``*``) -> 304;
- else, without ``If-None-Match``, ``If-Modified-Since`` at or after the current
  ``Last-Modified`` -> 304;
- else 200 with the body and the validators that are set (``None`` = not sent).
A 304 carries the current validators, as RFC 9110 asks.

``status``/``reason`` override the answer (an error page, no validators); ``reason`` may
name request headers as ``{authorization}``, for a server that echoes what it was sent.
``die`` is ``"no-response"`` (close the connection without a byte) or ``"mid-body"``
(a 200 whose Content-Length promises the whole body, half of it sent, then closed).
POST requests are recorded with their body and answered 200 (a webhook receiver).
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

DIE_MODES = ("no-response", "mid-body")
SETTINGS = (
    "etag",
    "last_modified",
    "body",
    "status",
    "reason",
    "hang",
    "die",
    "delay",
    "headers",
)


@dataclass
class Seen:
    """One request as the origin saw it, and what it did about it."""

    at: float
    """time.monotonic() when the request arrived."""
    wall: float
    """time.time() when the request arrived."""
    method: str
    path: str
    headers: dict[str, str]
    """Request headers, names lower-cased."""
    body: bytes = b""
    hung: bool = False
    """The request was held by hang=True before being answered (or abandoned)."""
    status: int | None = None
    """What was answered; None while hung, or when the connection was closed without one."""
    reason: str = ""
    etag: str | None = None
    """The ETag header of the answer."""
    last_modified: str | None = None
    outcome: str = "pending"
    """pending | answered | died (no-response / mid-body) | broken (the client was gone)."""
    done_at: float | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Settings:
    etag: str | None
    last_modified: str | None
    body: bytes
    status: int | None = None
    reason: str | None = None
    hang: bool = False
    die: str | None = None
    delay: float = 0.0
    """Seconds each request is held before its answer (requests overlap meanwhile)."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers on every answer: Retry-After, Cache-Control, ..."""


@dataclass
class _Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    die: str | None = None


class _Missing(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return ""


def weak_match(if_none_match: str, etag: str) -> bool:
    """RFC 9110 If-None-Match evaluation: weak comparison against every listed tag."""
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def _not_modified_since(if_modified_since: str, last_modified: str) -> bool:
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since)
        modified = email.utils.parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False
    return modified <= since


class Origin:
    def __init__(
        self,
        *,
        etag: str | None = '"v1"',
        last_modified: str | None = None,
        body: bytes = b"hello, world\n",
        hang_timeout: float = 30.0,
    ) -> None:
        self._settings = _Settings(etag=etag, last_modified=last_modified, body=body)
        self.hang_timeout = hang_timeout
        self._lock = threading.Condition()
        self._requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        """The most requests held at once, each until its answer began."""
        self._gate = threading.Event()
        self._gate.set()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Origin:
        origin = self

        class Handler(_Handler):
            pass

        Handler.origin = origin
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._port = int(server.server_address[1])
        # A short poll interval keeps shutdown() quick.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # keep-alive connections idle in their handler threads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._server = None

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port is not None, "the origin was never started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # -- control --------------------------------------------------------------------------

    def set(self, **changes: Any) -> None:
        """Change what the origin answers, atomically (several settings at once)."""
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise TypeError(f"unknown origin settings: {sorted(unknown)}")
        if changes.get("die") not in (None, *DIE_MODES):
            raise ValueError(f"die must be one of {DIE_MODES} or None")
        with self._lock:
            for name, value in changes.items():
                setattr(self._settings, name, value)
            if "hang" in changes:
                if changes["hang"]:
                    self._gate.clear()
                else:
                    self._gate.set()

    def release(self) -> None:
        """Stop hanging: the held requests are answered (with the settings current now)."""
        self.set(hang=False)

    @property
    def requests(self) -> list[Seen]:
        """Every request so far, in order of arrival (a snapshot of the list)."""
        with self._lock:
            return list(self._requests)

    def hung(self) -> list[Seen]:
        """The requests being held right now."""
        return [r for r in self.requests if r.hung and r.outcome == "pending"]

    def wait_hung(self, timeout: float) -> Seen:
        """Block until a request is being held; return it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                held = [r for r in self._requests if r.hung and r.outcome == "pending"]
                if held:
                    return held[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no request hung within {timeout}s")
                self._lock.wait(left)

    # -- serving (handler threads) --------------------------------------------------------

    def _arrive(self, seen: Seen) -> bool:
        with self._lock:
            self._requests.append(seen)
            seen.hung = self._settings.hang
            self._lock.notify_all()
            return seen.hung

    def _finish(self, seen: Seen, outcome: str, answer: _Answer | None) -> None:
        with self._lock:
            if answer is not None:
                seen.status = answer.status
                seen.reason = answer.reason
                headers = dict(answer.headers)
                seen.etag = headers.get("ETag")
                seen.last_modified = headers.get("Last-Modified")
            seen.outcome = outcome
            seen.done_at = time.monotonic()
            self._lock.notify_all()

    def _answer(self, seen: Seen) -> _Answer:
        """Decide the answer from the settings current now (called under the lock)."""
        s = self._settings
        if seen.method == "POST":
            if s.status is not None:
                return _Answer(s.status, s.reason or "", body=b"")
            return _Answer(200, "OK", [("Content-Type", "application/json")], b"{}")
        if s.die == "no-response":
            return _Answer(0, "", die="no-response")
        if s.status is not None:
            reason = (s.reason or "").format_map(_Missing(seen.headers))
            return _Answer(s.status, reason, [("Content-Type", "text/plain")], b"error\n")
        validators: list[tuple[str, str]] = []
        if s.etag is not None:
            validators.append(("ETag", s.etag))
        if s.last_modified is not None:
            validators.append(("Last-Modified", s.last_modified))
        inm = seen.header("if-none-match")
        ims = seen.header("if-modified-since")
        if inm is not None:
            not_modified = s.etag is not None and weak_match(inm, s.etag)
        else:
            not_modified = (
                ims is not None
                and s.last_modified is not None
                and _not_modified_since(ims, s.last_modified)
            )
        if not_modified:
            return _Answer(304, "Not Modified", validators)
        headers = [("Content-Type", "text/plain"), *validators]
        return _Answer(200, "OK", headers, s.body, die=s.die)


class _Handler(BaseHTTPRequestHandler):
    origin: Origin
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers and pooled clients do

    def setup(self) -> None:
        super().setup()
        with self.origin._lock:
            self.origin._connections.add(self.connection)

    def finish(self) -> None:
        with self.origin._lock:
            self.origin._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        # A client reset its idle keep-alive connection, or was killed mid-request.
        with contextlib.suppress(OSError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        origin = self.origin
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(
            at=time.monotonic(),
            wall=time.time(),
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        with origin._lock:
            origin.in_flight += 1
            origin.max_in_flight = max(origin.max_in_flight, origin.in_flight)
        try:
            self._answer_request(seen)
        finally:
            with origin._lock:
                if seen.status is None:  # not answered (died, broken): not in flight either
                    origin.in_flight -= 1

    def _answer_request(self, seen: Seen) -> None:
        origin = self.origin
        if origin._arrive(seen):
            origin._gate.wait(origin.hang_timeout)
        if delay := origin._settings.delay:
            time.sleep(delay)
        with origin._lock:
            answer = origin._answer(seen)
            answer.headers = [*answer.headers, *origin._settings.headers]
        if answer.die == "no-response":
            self.close_connection = True
            origin._finish(seen, "died", None)
            return
        with origin._lock:  # from here the client may have its answer: no longer in flight
            origin.in_flight -= 1
            seen.status = answer.status
        try:
            self.send_response(answer.status, answer.reason)
            for name, value in answer.headers:
                self.send_header(name, value)
            payload = b"" if self.command == "HEAD" or answer.status == 304 else answer.body
            if answer.status != 304:
                self.send_header("Content-Length", str(len(answer.body)))
            if answer.die == "mid-body":
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                origin._finish(seen, "died", answer)
                return
            self.end_headers()
            if payload:
                self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client went away (killed while we held its request)
            self.close_connection = True
            origin._finish(seen, "broken", answer)
            return
        origin._finish(seen, "answered", answer)
