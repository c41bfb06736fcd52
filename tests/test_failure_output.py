"""How failures read, through the console script: one line per failed run with its final
outcome and the next run (`watcher run`), the reason in plain words, the same from both
transports (`watcher check`), and a crashing plugin's traceback once per process.

Every failure is a real one on this machine: a closed port, a name that cannot resolve, a
server that never answers, TLS against a plain-HTTP port, an untrusted certificate, a 503.
No name lookup leaves the machine: the commands run with a `sitecustomize` that refuses
every name but localhost, as a resolver refuses `nonexistent.invalid`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from watcher.queue import Queue

from .helpers import Watcher, wait_for
from .origin import Origin

WATCHER = str(Path(sys.executable).parent / "watcher")
TRANSPORTS = ("aiohttp", "httpx")
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
NO_LOOKUPS = """
import socket

_getaddrinfo = socket.getaddrinfo


def _local_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in (None, "localhost", "127.0.0.1", "::1"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _local_only
"""
CRASHING_PLUGIN = """
from watcher.check import CheckContext, CheckResult


async def check(ctx: CheckContext) -> CheckResult:
    raise ValueError("no luck with " + ctx.resource.headers["X-Api-Key"])
"""
SECRET = "s3cr3t-key-value"


@pytest.fixture
def no_lookups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on the commands' PYTHONPATH: the lookup guard, and room for plugins."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(NO_LOOKUPS)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    return folder


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def untrusted_tls_server(folder: Path) -> Iterator[int]:
    """HTTPS with a self-signed certificate for localhost (made by openssl here)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def start_watcher(*args: str, cwd: Path) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    environment.update({"COLUMNS": "400", "NO_COLOR": "1"})
    return subprocess.Popen(
        [WATCHER, *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def resource(id: str, url: str, *, every: str = "10m", extra: str = "") -> str:
    return f"  - id: {id}\n    url: {url}\n    every: {every}\n    timeout: 0.5s\n{extra}"


def write_config(folder: Path, redis_url: str, queue: str, *resources: str) -> Path:
    path = folder / "watcher.yaml"
    path.write_text(f"redis: {redis_url}\nqueue: {queue}\nresources:\n{''.join(resources)}")
    return path


# -- the reason in plain words, the same from both transports --------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reasons_in_plain_words(
    tmp_path: Path, no_lookups: Path, origin: Origin, transport: str
) -> None:
    refused = closed_port()
    with silent_server() as silent, untrusted_tls_server(tmp_path) as tls:
        config = write_config(
            tmp_path,
            "redis://127.0.0.1:1",  # `watcher check --id` does not touch Redis
            "q",
            resource("refused", f"http://127.0.0.1:{refused}/"),
            resource("dns", "http://nonexistent.invalid/"),
            resource("silent", f"http://127.0.0.1:{silent}/"),
            resource("plain", f"https://127.0.0.1:{origin.port}/"),
            resource("untrusted", f"https://localhost:{tls}/"),
        )
        expected = {
            "refused": f"cannot connect to 127.0.0.1:{refused}: connection refused",
            "dns": "cannot resolve host nonexistent.invalid",
            "silent": "timed out after 0.5s",
            "plain": f"TLS error with 127.0.0.1:{origin.port}: wrong version number",
            "untrusted": f"TLS certificate error with localhost:{tls}: self-signed certificate",
        }
        checks = {  # at once: each command takes a second to start
            id: start_watcher(
                "check", "--id", id, "-c", str(config), "--transport", transport, cwd=tmp_path
            )
            for id in expected
        }
        for id, reason in expected.items():
            out, err = checks[id].communicate(timeout=60)
            assert checks[id].returncode == 1, (id, out, err)
            assert out.splitlines()[-1] == f"first run: failed: {reason}", out
            assert "ssl:default" not in out + err


def test_the_lookup_guard_holds(tmp_path: Path, no_lookups: Path) -> None:
    """The commands above resolve no name but localhost: nothing leaves 127.0.0.1."""
    code = "import socket; socket.getaddrinfo('example.org', 80)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "gaierror" in done.stderr and "Name or service not known" in done.stderr


# -- one line per failed run: the final outcome and the next run -------------------------------


async def test_a_failed_run_is_one_line_with_its_outcome_and_next_run(
    tmp_path: Path, no_lookups: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    refused = closed_port()
    origin.set(status=503)
    with Origin() as missing:
        missing.set(status=404)
        write_config(
            tmp_path,
            redis_url,
            queue_name,
            resource("docs", f"http://127.0.0.1:{refused}/", every="90s"),
            resource("busy", origin.url, every="90s"),
            resource("gone", missing.url, every="90s"),
        )
        run = Watcher("run", "--processes", "1", cwd=tmp_path)
        try:
            try:
                await wait_for(lambda: len(run.saying(" gave up after ")) >= 2, 20, what="give-ups")
            except AssertionError:
                raise AssertionError(run.output) from None
            await wait_for(lambda: run.saying(" gone: failed: "), 5, what="a failed run")
            queue = Queue.from_url(redis_url, queue_name)
            try:
                docs = await queue.get_scheduler("docs")
            finally:
                await queue.close()
        finally:
            code = run.stop()
    assert code == 0, run.output
    next_run = r"; next run in (?P<next>(\d+m)?(\d+s)?)"
    docs_lines = run.saying(" WARNING docs: ")
    for line in docs_lines:  # a line per run that gave up (the next may have come already)
        assert re.fullmatch(
            rf"{STAMP} WARNING docs: gave up after 3 attempts: "
            rf"cannot connect to 127\.0\.0\.1:{refused}: connection refused{next_run}",
            line,
        ), line
    said = re.fullmatch(rf"(?P<at>{STAMP}) .*{next_run}", docs_lines[-1])
    assert said and docs is not None and docs.next_fire_ms is not None
    logged_at = time.mktime(time.strptime(said["at"], "%Y-%m-%d %H:%M:%S"))
    assert abs(logged_at + _seconds(said["next"]) - docs.next_fire_ms / 1000) <= 2.5
    busy = rf"{STAMP} WARNING busy: gave up after 3 attempts: HTTP 503 Service Unavailable"
    assert all(re.fullmatch(busy + next_run, line) for line in run.saying(" busy: ")), run.output
    gone = rf"{STAMP} WARNING gone: failed: HTTP 404 Not Found"
    assert all(re.fullmatch(gone + next_run, line) for line in run.saying(" gone: ")), run.output
    attempts = [line for line in run.lines if "attempt" in line and "gave up" not in line]
    assert not attempts, run.output  # attempts that are retried stay quiet
    assert "ssl:default" not in run.output


def _seconds(duration: str) -> int:
    minutes, _, seconds = duration.rpartition("m")
    return int(minutes or 0) * 60 + int(seconds.rstrip("s") or 0)


# -- a crashing plugin: its traceback once per process, then a line per run ----------------------


async def test_a_crashing_check_logs_its_traceback_once(
    tmp_path: Path,
    no_lookups: Path,
    redis_url: str,
    queue_name: str,
    origin: Origin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (no_lookups / "crashing.py").write_text(CRASHING_PLUGIN)
    monkeypatch.setenv("CRASH_KEY", SECRET)
    extra = "    check: crashing:check\n    headers: {X-Api-Key: '${CRASH_KEY}'}\n"
    write_config(
        tmp_path,
        redis_url,
        queue_name,
        resource("c1", origin.url, every="1s", extra=extra),
        resource("c2", origin.url, every="1s", extra=extra),
    )
    run = Watcher("run", "--processes", "1", cwd=tmp_path)
    try:
        await wait_for(lambda: len(run.saying(" check crashed: ")) >= 5, 20, what="crashes")
    finally:
        code = run.stop()
    assert code == 0, run.output
    assert SECRET not in run.output
    crash = r"check crashed: ValueError: no luck with \*+; next run in \S+"
    lines = run.saying(" check crashed: ")
    first = run.lines.index(lines[0])
    assert re.fullmatch(rf"{STAMP} ERROR c[12]: {crash}", lines[0]), lines[0]
    assert run.lines[first + 1] == "Traceback (most recent call last):", run.output
    assert any(re.fullmatch(r"ValueError: no luck with \*+", line) for line in run.lines)
    assert len(run.saying("Traceback")) == 1, run.output  # once, for both resources
    for line in lines[1:]:
        assert re.fullmatch(rf"{STAMP} ERROR c[12]: {crash} \(--debug shows the traceback\)", line)
