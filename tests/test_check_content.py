"""The ``content`` check against pytest-httpx."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
from pytest_httpx import HTTPXMock

from checks import content
from watcher.check import CheckContext, CheckFailed, TransientCheckError

URL = "https://example.test/page"

MakeCtx = Callable[..., CheckContext]


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


async def test_first_run_is_a_baseline(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(text="line 1\nline 2\n")
    result = await content.check(make_ctx())
    assert result.baseline and not result.changed
    assert result.summary.startswith("baseline: sha256 ")
    assert result.state == {
        "content_hash": sha("line 1\nline 2\n"),
        "status_code": 200,
        "text": "line 1\nline 2\n",
    }


async def test_unchanged_and_changed_with_a_diff(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(text="a\nb\nc\n")
    httpx_mock.add_response(text="a\nB\nc\nd\n")
    state = {"content_hash": sha("a\nb\nc\n"), "status_code": 200, "text": "a\nb\nc\n"}
    same = await content.check(make_ctx(state))
    assert not same.changed and same.summary.startswith("unchanged")

    moved = await content.check(make_ctx(state))
    assert moved.changed
    assert moved.summary.endswith("(+2 -1 lines)")
    assert moved.details is not None
    assert moved.details.splitlines()[:2] == ["--- before", "+++ after"]
    assert "-b" in moved.details.splitlines()
    assert "+B" in moved.details.splitlines()
    assert "+d" in moved.details.splitlines()
    # The change shows the hashes; the text is in the diff, not repeated as old → new.
    assert moved.old == {"content_hash": sha("a\nb\nc\n")}
    assert moved.new == {"content_hash": sha("a\nB\nc\nd\n")}


async def test_binary_bodies_keep_no_text(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    body = bytes(range(256))
    httpx_mock.add_response(content=body, headers={"Content-Type": "image/png"})
    httpx_mock.add_response(content=body[::-1], headers={"Content-Type": "image/png"})
    first = await content.check(make_ctx())
    assert first.state == {"content_hash": sha(body), "status_code": 200}
    second = await content.check(make_ctx(first.state))
    assert second.changed and second.details is None


async def test_regex_hashes_the_matches(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    html = "<p>price 10</p><p>ad 123</p><p>price 12</p>"
    httpx_mock.add_response(html=html)
    result = await content.check(make_ctx(options={"regex": r"price \d+"}))
    assert result.state["text"] == "price 10\nprice 12"
    assert result.state["content_hash"] == sha("price 10\nprice 12")


async def test_regex_with_groups_uses_group_1(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(text="price: 10; noise 1\nprice: 12; noise 2")
    httpx_mock.add_response(text="price: 10; noise 3\nprice: 12; noise 4")
    first = await content.check(make_ctx(options={"regex": r"price: (\d+)"}))
    assert first.state["text"] == "10\n12"
    second = await content.check(make_ctx(first.state, options={"regex": r"price: (\d+)"}))
    assert not second.changed  # only the noise moved


async def test_invalid_regex_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(text="x")
    with pytest.raises(CheckFailed, match="invalid regex"):
        await content.check(make_ctx(options={"regex": "("}))


async def test_json_path_selects_a_value(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    doc = {"data": {"items": [{"price": 10, "seen": 1}, {"price": 12}]}}
    httpx_mock.add_response(json=doc)
    doc["data"]["items"][0]["seen"] = 2
    httpx_mock.add_response(json=doc)
    doc["data"]["items"][0]["price"] = 11
    httpx_mock.add_response(json=doc)
    options = {"json_path": "data.items.0.price"}
    first = await content.check(make_ctx(options=options))
    assert first.state["text"] == "10"
    second = await content.check(make_ctx(first.state, options=options))
    assert not second.changed
    third = await content.check(make_ctx(second.state, options=options))
    assert third.changed
    assert third.details is not None and "-10" in third.details and "+11" in third.details


async def test_json_path_to_an_object_is_stable_json(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(json={"data": {"b": 1, "a": [1, 2]}})
    result = await content.check(make_ctx(options={"json_path": "data"}))
    assert json.loads(result.state["text"]) == {"a": [1, 2], "b": 1}
    assert result.state["text"].index('"a"') < result.state["text"].index('"b"')


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ("data.nope", "data.nope"),
        ("data.items.5", "data.items.5"),
        ("data.items.x", "data.items.x"),
    ],
)
async def test_json_path_that_leads_nowhere_fails(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx, path: str, missing: str
) -> None:
    httpx_mock.add_response(json={"data": {"items": [1, 2]}})
    with pytest.raises(CheckFailed, match=f"nothing at '{missing}'"):
        await content.check(make_ctx(options={"json_path": path}))


async def test_json_path_on_a_non_json_body_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(text="<html>")
    with pytest.raises(CheckFailed, match="not JSON"):
        await content.check(make_ctx(options={"json_path": "a"}))


def test_resolve_supports_negative_indexes() -> None:
    assert content.resolve({"a": [1, 2, 3]}, "a.-1") == 3


async def test_regex_and_json_path_together_fail(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(text="x")
    with pytest.raises(CheckFailed, match="cannot be used together"):
        await content.check(make_ctx(options={"regex": "x", "json_path": "a"}))


async def test_text_is_capped_and_changes_past_the_cap_still_count(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    prefix = "x" * content.TEXT_CAP
    httpx_mock.add_response(text=prefix + "tail 1")
    httpx_mock.add_response(text=prefix + "tail 2")
    first = await content.check(make_ctx())
    assert len(first.state["text"]) == content.TEXT_CAP
    second = await content.check(make_ctx(first.state))
    assert second.changed
    assert second.details is not None and "beyond the first 64 KiB" in second.details


async def test_body_cap(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(text="x" * 100)
    with pytest.raises(CheckFailed, match="body too large"):
        await content.check(make_ctx(options={"max_bytes": 50}))


async def test_errors_are_classified(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(status_code=404)
    httpx_mock.add_response(status_code=502)
    with pytest.raises(CheckFailed) as caught:
        await content.check(make_ctx())
    assert not isinstance(caught.value, TransientCheckError)
    with pytest.raises(TransientCheckError):
        await content.check(make_ctx())


async def test_charset_is_honoured(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(
        content="café".encode("latin-1"), headers={"Content-Type": "text/plain; charset=latin-1"}
    )
    result = await content.check(make_ctx())
    assert result.state["text"] == "café"
