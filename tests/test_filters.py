"""Filters (issue 13): parsing and validation, each filter, and end to end through the
console script (`watcher run` against the test Redis and a local origin, then
`watcher history --json`): a page whose time changes on every request and whose price
changes once is one change, under the content check and under the etag check."""

from __future__ import annotations

import asyncio
import itertools
import json
import time as clock
from pathlib import Path
from typing import Any

import pytest

from watcher import filters
from watcher.check import CheckFailed
from watcher.config import ConfigError, parse_config

from .helpers import Watcher, wait_for
from .origin import Origin, Seen, _Answer
from .test_hostile_config import watcher

PRICE_CHAIN = [{"css": "#price"}, "html2text"]


def chain(*entries: Any) -> list[filters.Filter]:
    return [filters.parse_filter(entry) for entry in entries]


def page(time: int, price: str) -> str:
    return (
        f"<html><body><p>Updated <span class=time>{time}</span></p>"
        f"<div id=price>{price} <b>EUR</b></div></body></html>"
    )


# ---------------------------------------------------------------------------- parsing


def test_the_three_forms_and_their_canonical_form() -> None:
    assert filters.parse_filter({"css": "#price"}).canonical() == {"css": "#price"}
    assert filters.parse_filter("html2text").canonical() == "html2text"
    optional = filters.parse_filter({"css": "#ad", "optional": True})
    assert optional == filters.Filter("css", "#ad", optional=True)
    assert optional.canonical() == {"css": "#ad", "optional": True}
    assert filters.parse_filter({"css": "#ad", "optional": False}).canonical() == {"css": "#ad"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("csss", "unknown filter `csss` (did you mean `css`?)"),
        ({"html2txt": None}, "unknown filter `html2txt` (did you mean `html2text`?)"),
        ({"css": "p[[["}, "invalid CSS selector 'p[[['"),
        ({"xpath": "//p["}, "invalid XPath '//p['"),
        ({"regex": "("}, "invalid regex '('"),
        ({"ignore": "[a"}, "invalid regex '[a'"),
        ({"jq": ".items["}, "invalid jq program '.items['"),
        ({"json_path": "$.["}, "invalid json_path '$.['"),
        ({"json_path": "a..b"}, "invalid json_path 'a..b'"),
        ("css", "filter `css` needs an argument"),
        ({"strip": "x"}, "filter `strip` takes no argument"),
        ({"css": "#a", "optional": "yes"}, "`optional` expects true or false"),
        ({"css": "#a", "xpath": "//p"}, "expected one filter per entry"),
        ({"css": ""}, "filter `css` expects text"),
        (3, "expected a filter name or a mapping"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(entry: Any, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        filters.parse_filter(entry)
    assert message in str(refused.value)


# ---------------------------------------------------------------------------- applying


def test_css_then_html2text_is_the_readable_price() -> None:
    assert filters.apply(chain(*PRICE_CHAIN), page(1, "10")).text.strip() == "10 EUR"


def test_xpath_nodes_strings_and_numbers() -> None:
    html = "<ul><li>b</li><li>a</li></ul>"
    assert filters.apply(chain({"xpath": "//li"}), html).text == "<li>b</li>\n<li>a</li>"
    assert filters.apply(chain({"xpath": "//li/text()"}, "sort"), html).text == "a\nb"
    assert filters.apply(chain({"xpath": "count(//li)"}), html).text == "2"


def test_json_path_jsonpath_and_dotted_give_values() -> None:
    body = json.dumps({"items": [{"price": 10}, {"price": 12}]})
    first = filters.apply(chain({"json_path": "$.items[0].price"}), body)
    assert (first.text, first.value, first.is_json) == ("10", 10, True)
    every = filters.apply(chain({"json_path": "$.items[*].price"}), body)
    assert every.value == [10, 12]
    assert filters.apply(chain({"json_path": "items.1.price"}), body).value == 12


def test_jq_outputs_and_a_text_filter_after_it() -> None:
    body = json.dumps({"items": [{"price": 10}, {"price": 12}]})
    assert filters.apply(chain({"jq": "[.items[].price] | add"}), body).value == 22
    many = filters.apply(chain({"jq": ".items[].price"}), body)
    assert many.value == [10, 12]
    as_text = filters.apply(chain({"jq": ".items[].price | tostring"}, "sort"), body)
    assert (as_text.text, as_text.is_json) == ("10\n12", False)


def test_regex_ignore_strip_sort() -> None:
    text = "b 2\n  Updated 12:00:01  \n\na 1\n"
    assert filters.apply(chain({"regex": r"(\w) \d\b"}), text).text == "b\na"
    cleaned = filters.apply(chain({"ignore": "^\\s*Updated"}, "strip", "sort"), text)
    assert cleaned.text == "a 1\nb 2"


@pytest.mark.parametrize(
    ("entry", "body", "reason"),
    [
        ({"css": "#price"}, "<p>no price</p>", "filter css '#price': matched nothing"),
        ({"xpath": "//h1"}, "<p>x</p>", "filter xpath '//h1': matched nothing"),
        ({"regex": "v\\d"}, "none", "filter regex 'v\\\\d': matched nothing"),
        ({"ignore": "^Updated"}, "a\nb", "filter ignore '^Updated': no line matched"),
        ({"json_path": "$.nope"}, "{}", "filter json_path '$.nope': matched nothing"),
        ({"json_path": "a.b"}, '{"a": {}}', "filter json_path 'a.b': nothing at 'a.b'"),
        ({"jq": ".nope"}, "{}", "filter jq '.nope': matched nothing"),
        ({"jq": "."}, "<html>", "filter jq '.': the input is not JSON"),
    ],
)
def test_a_filter_that_matches_nothing_fails_the_run(entry: Any, body: str, reason: str) -> None:
    with pytest.raises(CheckFailed) as failed:
        filters.apply(chain(entry), body)
    assert reason in failed.value.reason


def test_an_optional_filter_may_match_nothing() -> None:
    assert filters.apply(chain({"css": "#ad", "optional": True}), "<p>x</p>").text == ""
    kept = filters.apply(chain({"ignore": "^Updated", "optional": True}), "a\nb")
    assert kept.text == "a\nb"  # nothing to drop: the text goes on as it was


def test_the_output_of_each_filter_is_capped() -> None:
    body = "<p>" + "x" * (filters.MAX_OUTPUT_CHARS + 10) + "</p>"
    with pytest.raises(CheckFailed, match="over the 1,048,576-character cap"):
        filters.apply(chain({"css": "p"}), body)


# ---------------------------------------------------------------------------- the YAML


def resource_yaml(extra: str, check: str = "content") -> str:
    return f"resources:\n  - id: shop\n    url: http://127.0.0.1:9/\n    check: {check}\n{extra}"


def test_filters_reach_the_check_in_its_options_and_change_the_identity() -> None:
    with_filters = parse_config(
        resource_yaml('    filters:\n      - css: "#price"\n      - html2text\n'), env={}
    ).resources[0]
    without = parse_config(resource_yaml(""), env={}).resources[0]
    assert with_filters.filters == PRICE_CHAIN
    assert with_filters.template()["options"] == {"filters": PRICE_CHAIN}
    assert "options" not in without.template()  # at its default, {}: left out
    assert with_filters.identity() != without.identity()
    other = parse_config(resource_yaml('    filters: [{css: "#total"}]\n'), env={}).resources[0]
    assert other.identity() not in (with_filters.identity(), without.identity())
    assert filters.chain_from_options(with_filters.template()["options"]) == chain(*PRICE_CHAIN)


@pytest.mark.parametrize(
    ("extra", "check", "where", "message"),
    [
        ("    filters:\n      - csss: x\n", "content", "6:9: resources[0] (id \"shop\").filters[0]",
         "did you mean `css`?"),
        ('    filters:\n      - html2text\n      - {jq: ".a["}\n', "etag",
         "7:9: resources[0] (id \"shop\").filters[1]", "invalid jq program"),
        ("    filters: [html2text]\n", "status", "5:14: resources[0] (id \"shop\").filters",
         "check `status` does not apply filters"),
    ],
)  # fmt: skip
def test_bad_filters_in_the_yaml_name_file_line_and_field(
    extra: str, check: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(resource_yaml(extra, check), env={})
    assert f"watcher.yaml:{where}:" in str(refused.value)
    assert message in str(refused.value)


# ---------------------------------------------------------------------------- end to end


class PricePage(Origin):
    """A shop page: its `<span class=time>` moves on every answer it renders; its price
    moves when the test says. With `etags`, each rendered answer has a new ETag, and a
    request that carries the newest one gets a 304 until `touch` (the time moved)."""

    def __init__(self, *, etags: bool) -> None:
        super().__init__(etag=None, body=b"")
        self.etags = etags
        self.price = "10"
        self.renders = 0
        self.stale = True

    def touch(self, price: str | None = None) -> None:
        with self._lock:
            self.price = price or self.price
            self.stale = True

    def _answer(self, seen: Seen) -> _Answer:  # called under the lock
        settings = self._settings
        fresh = settings.etag is not None and seen.header("if-none-match") == settings.etag
        if not self.etags or self.stale or not fresh:
            self.renders += 1
            self.stale = False
            settings.body = page(self.renders, self.price).encode()
            settings.etag = f'"r{self.renders}"' if self.etags else None
        return super()._answer(seen)


def run_config(tmp_path: Path, redis_url: str, queue: str, url: str, extra: str) -> None:
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue}\nresources:\n"
        f"  - id: shop\n    url: {url}\n    every: 200ms\n    min_every: 100ms\n{extra}"
    )


def history(tmp_path: Path) -> list[dict[str, Any]]:
    done = watcher("history", "shop", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    changes: list[dict[str, Any]] = json.loads(done.stdout)
    return changes


async def answered(
    origin: Origin, count: int, status: int | None = None, if_none_match: str | None = None
) -> list[Seen]:
    """Wait for `count` answered requests (with that status, sent that If-None-Match)."""

    def wanted(seen: Seen) -> bool:
        return (
            seen.status is not None
            and (status is None or seen.status == status)
            and (if_none_match is None or seen.header("if-none-match") == if_none_match)
        )

    def enough() -> list[Seen]:
        seen = [r for r in origin.requests if wanted(r)]
        return seen if len(seen) >= count else []

    what = f"{count} answers (status {status}, If-None-Match {if_none_match})"
    return await wait_for(enough, 30, step=0.05, what=what)


def price_lines(details: str) -> tuple[list[str], list[str]]:
    lines = details.splitlines()
    return [x for x in lines if x.startswith("-") and "EUR" in x], [
        x for x in lines if x.startswith("+") and "EUR" in x
    ]


async def test_content_with_filters_records_only_the_price_change(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    with PricePage(etags=False) as shop:
        filters_yaml = (
            '    check: content\n    filters:\n      - css: "#price"\n      - html2text\n'
        )
        run_config(tmp_path, redis_url, queue_name, shop.url, filters_yaml)
        run = Watcher("run", "--processes", "1", cwd=tmp_path)
        try:
            await answered(shop, 4)  # the baseline and unchanged runs: only the time moved
            before = len(shop.requests)
            shop.touch(price="12")
            await answered(shop, before + 4)
        finally:
            assert run.stop() == 0, run.output
    (change,) = history(tmp_path)
    removed, added = price_lines(change["details"])
    assert [line.strip("- ") for line in removed] == ["10 EUR"]
    assert [line.strip("+ ") for line in added] == ["12 EUR"]
    assert "[-10-]{+12+}" in change["details"]  # the word diff of a short text
    assert "span" not in change["details"] and "time" not in change["details"]
    status = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)
    assert status["resources"][0]["last_change_details"] == change["details"]  # also in status


async def test_etag_with_filters_writes_new_etags_back_silently(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    with PricePage(etags=True) as shop:
        filters_yaml = '    filters:\n      - css: "#price"\n      - html2text\n'  # check: etag
        run_config(tmp_path, redis_url, queue_name, shop.url, filters_yaml)
        run = Watcher("run", "--processes", "1", cwd=tmp_path)
        try:
            await answered(shop, 2, status=304)  # after the baseline: r1 is current
            for _ in range(3):  # the time moves: a new ETag over the same price
                newest = f'"r{shop.renders + 1}"'
                shop.touch()
                await answered(shop, 2, status=304, if_none_match=newest)
            newest = f'"r{shop.renders + 1}"'
            shop.touch(price="12")
            await answered(shop, 2, status=304, if_none_match=newest)
        finally:
            assert run.stop() == 0, run.output
    rendered = [r for r in shop.requests if r.status == 200]
    assert [r.etag for r in rendered] == [f'"r{n}"' for n in range(1, 6)]  # each fetched once
    for previous, answer in itertools.pairwise(rendered):
        assert answer.header("if-none-match") == previous.etag  # the newest was sent
    (change,) = history(tmp_path)
    assert (change["old"], change["new"]) == ({"etag": '"r4"'}, {"etag": '"r5"'})
    removed, added = price_lines(change["details"])
    assert ["10 EUR" in line for line in removed] == [True]
    assert ["12 EUR" in line for line in added] == [True]


async def test_a_json_selection_shows_old_and_new_values(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    def body(price: int, seen: int) -> bytes:
        return json.dumps({"items": [{"price": price, "seen": seen}], "total": 1}).encode()

    with Origin(etag=None, body=body(10, 0)) as api:
        filters_yaml = "    check: content\n    filters:\n      - json_path: $.items[0].price\n"
        run_config(tmp_path, redis_url, queue_name, api.url, filters_yaml)
        run = Watcher("run", "--processes", "1", cwd=tmp_path)
        try:
            await answered(api, 2)
            api.set(body=body(10, 1))  # not the selection: no change
            await answered(api, len(api.requests) + 2)
            api.set(body=body(11, 2))
            await answered(api, len(api.requests) + 2)
            await asyncio.sleep(0.3)
        finally:
            assert run.stop() == 0, run.output
    (change,) = history(tmp_path)
    assert (change["old"], change["new"]) == ({"value": 10}, {"value": 11})
    assert "-10" in change["details"].splitlines() and "+11" in change["details"].splitlines()


def test_nested_matches_are_refused_before_they_fill_the_memory() -> None:
    """Each nested match repeats its subtree: 10,000 nested divs would join to ~500 MB (lxml
    flattens such nesting itself, so xpath is not tried here)."""
    body = "<div>" * 10_000 + "x" + "</div>" * 10_000
    started = clock.monotonic()
    with pytest.raises(CheckFailed, match="character cap"):
        filters.apply(chain({"css": "div"}), body)
    assert clock.monotonic() - started < 5
