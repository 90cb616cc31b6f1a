"""Service logs: JSON lines with event/class/key, and no URL query in any format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from patchcache.logging_setup import configure_logging, event, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fill http://h.example/a.deb?token=s3cret done", "fill http://h.example/a.deb done"),
        ("https://cdn.example/x?sig=1&exp=2#frag", "https://cdn.example/x#frag"),
        ("two: http://a/1?x=1 and http://b/2?y=2", "two: http://a/1 and http://b/2"),
        ("no url? fine", "no url? fine"),
        ("'http://a/q?x' quoted", "'http://a/q' quoted"),
    ],
)
def test_redact_strips_queries(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_json_lines_carry_event_class_key_and_no_query(root_logging: None) -> None:
    out = io.StringIO()
    configure_logging("json", service="prefetch", stream=out)
    log = logging.getLogger("patchcache.prefetch")
    log.info(
        "%s: fill %s",
        "key1",
        "http://cdn.example/big.iso?token=s3cret",
        extra=event("fill_start", cls="debian", key="key1", url="http://x/y?auth=pw", n=3),
    )
    log.warning("plain line about http://x/z?k=v")
    try:
        raise RuntimeError("boom http://x/e?secret=1")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["event"] == "fill_start"
    assert first["class"] == "debian" and first["key"] == "key1" and first["n"] == 3
    assert first["service"] == "prefetch" and first["level"] == "info"
    assert first["message"] == "key1: fill http://cdn.example/big.iso"
    assert first["url"] == "http://x/y"
    assert second["event"] == "log" and second["message"] == "plain line about http://x/z"
    assert "secret" not in out.getvalue() and "token" not in out.getvalue()
    assert "RuntimeError" in third["exception"]


def test_text_format_redacts_too(root_logging: None) -> None:
    out = io.StringIO()
    configure_logging("text", service="icap", stream=out, text_format="%(message)s")
    logging.getLogger("patchcache.icap").info("GET http://h/p?token=abc")
    assert out.getvalue() == "GET http://h/p\n"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        configure_logging("xml", service="icap")
