"""Resources from a plain list of URLs (`resources_from:`, watcher/url_list.py): stable ids,
defaults applied, bad lines named by file and line, and a sync that follows the list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from watcher.config import ConfigError, load_config
from watcher.url_list import resource_id_for

from .test_cli import watcher

ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def test_ids_are_stable_readable_unique_and_valid() -> None:
    urls = [
        "https://example.org/docs/intro",
        "https://example.org/docs/intro?x=1",
        "http://example.org/docs/intro",
        "https://example.org/" + "long/" * 100,
        "https://例え.jp/パス",
    ]
    ids = [resource_id_for(url) for url in urls]
    assert ids[0] == resource_id_for(urls[0]) == "example.org-docs-intro:88635b54"
    assert len(set(ids)) == len(urls)
    assert all(ID.fullmatch(id) for id in ids), ids


def test_a_list_becomes_resources_with_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text(
        "# our docs\nhttps://example.org/a\n\n  https://example.org/b  \nhttps://example.org/a\n"
    )
    (tmp_path / "watcher.yaml").write_text(
        "defaults: {every: 1h, check: status}\nresources_from: urls.txt\n"
        "resources:\n  - id: own\n    url: https://example.org/own\n"
    )
    config = load_config(tmp_path / "watcher.yaml")
    assert [(r.url, r.every, r.check) for r in config.resources] == [
        ("https://example.org/own", 3600.0, "status"),
        ("https://example.org/a", 3600.0, "status"),
        ("https://example.org/b", 3600.0, "status"),
    ]


def test_listed_resources_are_each_their_own_with_the_defaults_secrets_kept(
    tmp_path: Path,
) -> None:
    """Listed resources are validated once and copied (watcher.config): each copy has its own
    id, URL and identity, and the defaults' secret stays a reference in each."""
    (tmp_path / "urls.txt").write_text("https://example.org/a\nhttps://user@example.org/b\n")
    (tmp_path / "watcher.yaml").write_text(
        "defaults:\n  every: 1h\n  headers: {Authorization: 'Bearer ${TOKEN}'}\n"
        "resources_from: urls.txt\n"
    )
    a, b = load_config(tmp_path / "watcher.yaml", env={"TOKEN": "s3cret"}).resources
    assert (a.url, b.url) == ("https://example.org/a", "https://user@example.org/b")
    assert a.id != b.id and a.identity() != b.identity()
    assert a.headers == b.headers == {"Authorization": "Bearer s3cret"}
    for resource in (a, b):
        stored = resource.template()
        assert stored["url"] == resource.url
        assert stored["headers"] == {"Authorization": "Bearer ${TOKEN}"}, stored


def test_bad_lines_are_named_by_file_and_line(tmp_path: Path) -> None:
    lines = ["https://ok.example/", "ftp://x/", "not a url"] + ["nope"] * 30
    (tmp_path / "urls.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "watcher.yaml").write_text("resources_from: [urls.txt]\n")
    with pytest.raises(ConfigError) as failed:
        load_config(tmp_path / "watcher.yaml")
    said = str(failed.value)
    assert f'{tmp_path / "urls.txt"}:2:1: invalid URL "ftp://x/"' in said
    assert 'urls.txt:3:1: invalid URL "not a url": it contains whitespace' in said
    assert "... and 12 more" in said  # 32 bad lines, 20 shown


def test_a_list_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("https://example.org/a\n" * 100)
    (tmp_path / "watcher.yaml").write_text("resources_from: urls.txt\n")
    with pytest.raises(ConfigError, match=r"over the 1KB limit.*WATCHER_MAX_URL_LIST_BYTES"):
        load_config(tmp_path / "watcher.yaml", env={"WATCHER_MAX_URL_LIST_BYTES": "1KB"})
    with pytest.raises(ConfigError, match="cannot read it"):
        (tmp_path / "watcher.yaml").write_text("resources_from: missing.txt\n")
        load_config(tmp_path / "watcher.yaml")


def test_sync_follows_the_list(tmp_path: Path, redis_url: str, queue_name: str) -> None:
    urls = [f"http://127.0.0.1:9/page/{n}" for n in range(2000)]
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\nresources_from: urls.txt\n"
    )
    first = watcher("sync", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2000 to create" in first.stdout
    again = watcher("sync", cwd=tmp_path)
    assert "0 to create, 0 to update, 0 to remove, 2000 unchanged" in again.stdout
    (tmp_path / "urls.txt").write_text("\n".join(urls[:1500]) + "\n")
    fewer = watcher("sync", cwd=tmp_path)
    assert "0 to create, 0 to update, 500 to remove, 1500 unchanged" in fewer.stdout
