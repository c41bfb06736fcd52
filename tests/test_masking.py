"""Secret header values never reach anything shown."""

from __future__ import annotations

import base64
import logging

import pytest

from watcher.check import Resource
from watcher.masking import RedactingLogger, mask_headers, mask_urls, redact


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


def test_mask_urls_masks_the_password_of_every_url_in_a_text() -> None:
    text = "from https://bot:hunter22@docs.example/a to ftp://tok3n@files:21/ via https://h/x@y"
    assert mask_urls(text) == (
        "from https://bot:***@docs.example/a to ftp://***@files:21/ via https://h/x@y"
    )
    assert mask_urls("https://bot:${DOCS_PASSWORD}@docs/") == "https://bot:***@docs/"
    assert mask_urls("mail me at someone@example.org") == "mail me at someone@example.org"


def test_redact_masks_given_values_and_urls() -> None:
    assert redact("pw hunter22, https://u:other@h/", {}, values=["hunter22", "ab"]) == (
        "pw ***, https://u:***@h/"
    )


def test_resource_url_credentials_are_a_basic_header_and_are_masked() -> None:
    resource = Resource(id="r", url="https://bot:p%40ss-w0rd@docs.example/")
    token = base64.b64encode(b"bot:p@ss-w0rd").decode()
    assert resource.url_authorization == f"Basic {token}"
    assert resource.shown_url == "https://bot:***@docs.example/"
    echoed = f"got p@ss-w0rd, {token} and Basic {token} from {resource.url}"
    assert resource.redact(echoed) == "got ***, *** and *** from https://bot:***@docs.example/"
    assert Resource(id="r", url="https://docs.example/").url_authorization is None


def test_redacting_logger_masks_the_formatted_message(caplog: pytest.LogCaptureFixture) -> None:
    resource = Resource(id="r", url="http://x/", headers={"X-Api-Key": "k3y-v4lue"})
    log = RedactingLogger(logging.getLogger("test.redacting"), resource.redact, {"resource": "r"})
    with caplog.at_level(logging.INFO, logger="test.redacting"):
        log.warning("ignoring Last-Modified %r", "k3y-v4lue")
        log.debug("not shown %s", "k3y-v4lue")
    [record] = caplog.records
    assert record.getMessage() == "ignoring Last-Modified '***'"
    assert record.resource == "r"  # type: ignore[attr-defined]
