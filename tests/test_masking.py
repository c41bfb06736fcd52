"""Secret header values never reach anything shown."""

from __future__ import annotations

from watcher.check import Resource
from watcher.masking import mask_headers, redact


def test_mask_headers() -> None:
    headers = {"Authorization": "Bearer t0ken", "Cookie": "a=b", "X-Mine": "s3", "Accept": "*/*"}
    assert mask_headers(headers, ["x-mine"]) == {
        "Authorization": "***",
        "Cookie": "***",
        "X-Mine": "***",
        "Accept": "*/*",
    }


def test_redact_whole_values_and_the_credential_after_a_scheme() -> None:
    headers = {"Authorization": "Bearer abcd1234", "X-Api-Key": "k3y-v4lue", "Accept": "text/html"}
    text = "got Bearer abcd1234, then abcd1234 alone, key k3y-v4lue, accept text/html"
    assert redact(text, headers) == "got ***, then *** alone, key ***, accept text/html"


def test_resource_redact_uses_its_secret_headers() -> None:
    resource = Resource(
        id="r",
        url="http://x/",
        headers={"X-Token": "tok-123"},
        secret_headers=frozenset({"X-Token"}),
    )
    assert resource.redact("echo tok-123") == "echo ***"
    assert resource.is_secret("x-token") and resource.is_secret("Authorization")
    assert not resource.is_secret("Accept")
