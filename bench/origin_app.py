# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""The origin for bench/checks.py: a minimal raw ASGI app, served by uvicorn with httptools.

    .venv/bin/python bench/origin_app.py --port 8181 [--resources 5000]

Serves N resources ``/r/<i>`` (0 <= i < N), each with a strong ETag ``"r<i>-v1"``:
a request whose ``If-None-Match`` lists that ETag (or ``*``) gets ``304 Not Modified``
with the ETag and no body (no Content-Length, no Transfer-Encoding: uvicorn adds
neither to a 304); any other request gets ``200`` with a small JSON body.

``GET /_stats`` answers JSON counters (not counted themselves): requests, ok (200),
not_modified (304), missing (404), body_bytes_304 (always 0: the proof is in the
probe of bench/checks.py, which reads a 304 off a raw socket).
"""

import sys
from pathlib import Path

# Run as a script, this file's folder would come first on sys.path, and bench/queue.py would
# shadow the standard library's `queue` (imported by asyncio and uvicorn): drop the folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import os
from typing import Any

from bench.common import arg_parser, event_loop_name

RESOURCES = int(os.environ.get("ORIGIN_RESOURCES", "5000"))
STATS = {"requests": 0, "ok": 0, "not_modified": 0, "missing": 0, "body_bytes_304": 0}

_ETAGS: list[bytes] = []
_BODIES: list[bytes] = []


def configure(resources: int) -> None:
    global RESOURCES
    RESOURCES = resources
    _ETAGS[:] = [f'"r{i}-v1"'.encode() for i in range(resources)]
    _BODIES[:] = [
        json.dumps({"id": i, "version": 1, "text": "unchanged " * 6}).encode()
        for i in range(resources)
    ]


def _matches(if_none_match: bytes, etag: bytes) -> bool:
    """RFC 9110 weak comparison against a comma-separated If-None-Match list (or *)."""
    if if_none_match.strip() == b"*":
        return True
    mine = etag.removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == mine for tag in if_none_match.split(b","))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    path: str = scope["path"]
    if path == "/_stats":
        await _respond(send, 200, json.dumps(STATS).encode(), b"application/json")
        return
    STATS["requests"] += 1
    index = -1
    if path.startswith("/r/"):
        number = path[3:]
        if number.isdigit():
            index = int(number)
    if not 0 <= index < RESOURCES:
        STATS["missing"] += 1
        await _respond(send, 404, b"not found\n", b"text/plain")
        return
    etag = _ETAGS[index]
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if _matches(value, etag):
                STATS["not_modified"] += 1
                await send(
                    {"type": "http.response.start", "status": 304, "headers": [(b"etag", etag)]}
                )
                await send({"type": "http.response.body", "body": b""})
                return
            break
    STATS["ok"] += 1
    await _respond(send, 200, _BODIES[index], b"application/json", etag)


async def _respond(
    send: Any, status: int, body: bytes, content_type: bytes, etag: bytes | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if etag is not None:
        headers.append((b"etag", etag))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--resources", type=int, default=RESOURCES)
    args = parser.parse_args()
    configure(args.resources)

    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop=event_loop_name(),
        log_level="warning",
        access_log=False,
    )


configure(RESOURCES)

if __name__ == "__main__":
    main()
