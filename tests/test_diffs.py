"""Readable diffs (issue 13): a unified diff, a word diff for short texts, and the caps."""

from __future__ import annotations

from watcher import diffs


def test_a_unified_diff_then_a_word_diff_for_short_texts() -> None:
    details = diffs.describe("price: 10 EUR\nin stock\n", "price: 12 EUR\nin stock\n")
    assert details is not None
    lines = details.splitlines()
    assert lines[:2] == ["--- before", "+++ after"]
    assert "-price: 10 EUR" in lines and "+price: 12 EUR" in lines
    assert lines[-3:] == ["word diff:", "price: [-10-]{+12+} EUR", "in stock"]
    assert diffs.count_lines(details) == (1, 1)


def test_word_diff_keeps_whitespace_and_shows_insertions_and_deletions() -> None:
    assert diffs.word_diff("a b\n c", "a b\n d e") == "a b\n [-c-]{+d e+}"
    assert diffs.word_diff("", "new") == "{+new+}"


def test_long_texts_get_only_the_line_diff() -> None:
    before = "\n".join(f"line {i}" for i in range(1000))
    after = before.replace("line 500", "line five hundred")
    details = diffs.describe(before, after)
    assert details is not None and "word diff" not in details
    assert "-line 500" in details and "+line five hundred" in details


def test_details_are_capped() -> None:
    before = "\n".join(f"old {i}" for i in range(20_000))
    after = "\n".join(f"new {i}" for i in range(20_000))
    details = diffs.describe(before, after)
    assert details is not None
    assert len(details) == diffs.MAX_DETAILS_CHARS and details.endswith("(diff truncated)")


def test_no_diff_without_both_texts_and_a_note_past_what_was_kept() -> None:
    assert diffs.describe(None, "x") is None
    assert diffs.describe("x", None) is None
    assert diffs.describe("same", "same", kept=100) == (
        "the change is beyond the first 100 bytes kept for diffs"
    )
    assert "first 64 KiB" in (diffs.describe("a", "a") or "")


def test_keep_cuts_at_a_byte_limit_without_splitting_a_character() -> None:
    assert diffs.keep("abc", 10) == "abc"
    assert diffs.keep("€€€", 4) == "€"  # 3 bytes each
    assert diffs.keep_limit({}) == diffs.DEFAULT_KEEP_BYTES
    assert diffs.keep_limit({"diff_max_bytes": 10}) == 10
