"""What a server says about freshness (watcher/freshness.py), read from hostile headers."""

from __future__ import annotations

import email.utils
import logging

import httpx
import pytest
from pytest_httpx import HTTPXMock

from checks.etag import check as etag_check
from watcher.check import CheckContext, Resource
from watcher.freshness import Freshness, freshness

NOW = 1_800_000_000.0
LOG = logging.getLogger("test")


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "seconds", "reason"),
    [
        ({"cache-control": "max-age=300"}, 300, "Cache-Control max-age=300"),
        ({"cache-control": "public, MAX-AGE=60, must-revalidate"}, 60, "Cache-Control max-age=60"),
        ({"cache-control": 'max-age="120"'}, 120, "Cache-Control max-age=120"),
        ({"cache-control": "max-age=60, s-maxage=600"}, 600, "Cache-Control s-maxage=600"),
        (
            {"cache-control": "max-age=300", "age": "100"},
            200,
            "Cache-Control max-age=300 (age 100)",
        ),
        ({"expires": http_date(NOW + 90), "date": http_date(NOW)}, 90, "Expires in 1m30s"),
        ({"expires": http_date(NOW + 30)}, 30, "Expires in 30s"),  # no Date: now stands in
        ({"retry-after": "45"}, 45, "Retry-After 45s"),
        ({"cache-control": "max-age=10", "retry-after": "45"}, 45, "Retry-After 45s"),
        ({"cache-control": "max-age=100", "retry-after": "45"}, 100, "Cache-Control max-age=100"),
    ],
)
def test_what_a_server_says_is_read(headers: dict[str, str], seconds: float, reason: str) -> None:
    assert freshness(headers, NOW) == Freshness(seconds, reason)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"cache-control": "no-cache, max-age=300"},
        {"cache-control": "no-store"},
        {"cache-control": "max-age=0"},
        {"cache-control": "max-age=-5"},
        {"cache-control": "max-age=abc"},
        {"cache-control": "max-age=1e9"},
        {"cache-control": "max-age=" + "9" * 5000},  # no 5,000-digit integer is parsed
        {"cache-control": "max-age=300, " + "x" * 10_000},  # too long to read at all
        {"cache-control": "max-age=300", "age": "400"},  # already stale
        {"expires": "0"},  # invalid: already expired (RFC 9111)
        {"expires": "-1", "date": http_date(NOW)},
        {"expires": http_date(NOW - 10), "date": http_date(NOW)},
        {"expires": "Thu, 01 Jan 99999 00:00:00 GMT"},
        {"retry-after": "soon"},
        {"retry-after": "nan"},
        {"cache-control": "max-age=٣٠٠"},  # Arabic-Indic digits: isdigit() says yes, RFC says no
    ],
)
def test_nothing_usable_leaves_the_schedule_in_charge(headers: dict[str, str]) -> None:
    assert freshness(headers, NOW) is None


def test_a_cap_says_what_cut_it() -> None:
    said = Freshness(7 * 86400, "Cache-Control max-age=604800")
    assert said.capped(86400) == Freshness(
        86400, "Cache-Control max-age=604800, capped by max_every 1d"
    )
    assert said.capped(8 * 86400) is said


async def test_the_etag_check_reports_freshness_on_200_and_304(httpx_mock: HTTPXMock) -> None:
    url = "http://127.0.0.1:9/page"
    httpx_mock.add_response(
        url=url, headers={"ETag": '"v1"', "Cache-Control": "max-age=5"}, content=b"x"
    )
    httpx_mock.add_response(url=url, status_code=304, headers={"Cache-Control": "max-age=7"})
    async with httpx.AsyncClient() as client:
        ctx = CheckContext(Resource(id="r", url=url), {}, client, LOG, _no_upsert)
        first = await etag_check(ctx)
        assert first.fresh_for == Freshness(5, "Cache-Control max-age=5")
        ctx = CheckContext(Resource(id="r", url=url), first.state, client, LOG, _no_upsert)
        second = await etag_check(ctx)
        assert second.not_modified
        assert second.fresh_for == Freshness(7, "Cache-Control max-age=7")


async def _no_upsert(**_: object) -> bool:
    return True
