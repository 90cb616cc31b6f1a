"""Responses Squid will not store are never expanded (real Squid, store-ID helper, ICAP).

Expanding a range of such a response makes Squid fetch the object from byte 0 for every range
and store nothing: the uplink pays the prefix of the object again for each range. The ICAP
service therefore never records them at first sight, so the helper never answers expand=1.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from patchcache.rules import load_rules
from patchcache.state import ObjectState, StateStore
from patchcache.testbed import MiB, Origin
from patchcache.testbed.clients import bits_download
from patchcache.testbed.squid_logs import wait_until
from patchcache.testbed.stack import Stack

pytestmark = pytest.mark.squid

RULES = """\
[settings]
default_max_object_size = "8 MiB"
[classes.windows-update]
max_object_size = "64 MiB"
[classes.windows-update-path]
max_object_size = "64 MiB"
"""
# windows-update-path: freshness "revalidate" (not pinned); windows-update: pinned.
REVALIDATED_PATH = "/d/msdownload/update/software/ftpk/2026/11/setup-{}.exe"
PINNED_DIR = "/d/msdownload/update/software/secu/2026/11"


@pytest.mark.parametrize(
    ("cache_control", "headers"),
    [("no-store", None), ("private", None), (None, {"Vary": "*"})],
    ids=["no-store", "private", "vary-star"],
)
def test_uncacheable_object_of_revalidated_class_is_never_expanded(
    origin: Origin,
    stack_dir: Path,
    cache_control: str | None,
    headers: dict[str, str] | None,
) -> None:
    path = REVALIDATED_PATH.format(cache_control or "vary")
    obj = origin.register(path, 24 * MiB, cache_control=cache_control, headers=headers)
    with Stack(stack_dir, rules_text=RULES, prefetch=False) as stack:
        url = f"http://download.windowsupdate.com:{origin.port}{obj.path}"
        stats = bits_download(
            stack.proxy_url, url, size=obj.size, verify=obj.content, stop_after=8 * MiB, timeout=120
        )
        assert stats.bytes_received == 8 * MiB
        # Exactly the bytes asked for crossed the uplink: every request kept its own Range.
        assert origin.bytes_sent(obj.path) == 8 * MiB
        # Every GET kept its Range (the store-ID helper's size look-up is a HEAD).
        gets = [r for r in origin.requests(obj.path) if r.method == "GET"]
        assert gets and all(r.range and r.range != "bytes=0-" for r in gets)
        status = stack.status()
        assert not any(status["counts"].values()) and not status["queue"], status


def test_pinned_class_with_vary_star_is_never_expanded(origin: Origin, stack_dir: Path) -> None:
    # A pinned class's refresh_pattern overrides no-store and private, but not `Vary: *`.
    obj = origin.register_digest_named(PINNED_DIR, 24 * MiB, suffix=".msu")
    origin.register(obj.path, content=obj.content, headers={"Vary": "*"})
    with Stack(stack_dir, rules_text=RULES, prefetch=False) as stack:
        url = f"http://download.windowsupdate.com:{origin.port}{obj.path}"
        bits_download(
            stack.proxy_url, url, size=obj.size, verify=obj.content, stop_after=4 * MiB, timeout=120
        )
        assert origin.bytes_sent(obj.path) == 4 * MiB
        status = stack.status()
        assert not any(status["counts"].values()) and not status["queue"], status


def test_pinned_class_with_no_store_is_still_expanded(origin: Origin, stack_dir: Path) -> None:
    # The control: Squid stores a pinned class's no-store object, so expanding it pays once.
    obj = origin.register_digest_named(
        PINNED_DIR, 24 * MiB, suffix=".cab", cache_control="no-store"
    )
    with Stack(stack_dir, rules_text=RULES, prefetch=False) as stack:
        url = f"http://download.windowsupdate.com:{origin.port}{obj.path}"
        bits_download(stack.proxy_url, url, size=obj.size, verify=obj.content, timeout=120)
        # The first range passed through, then one whole copy.
        assert origin.bytes_sent(obj.path) <= obj.size + 2 * MiB
        assert stack.status()["counts"].get("queued") == 1


def test_recorded_object_that_turns_no_store_is_parked(origin: Origin, stack_dir: Path) -> None:
    """An object recorded (expandable) while its answers were storable, now answered
    `no-store`: the ICAP service parks it at the first such answer. Once the store-ID helper's
    short-lived "yes" has expired, the clients' ranges keep their Range again instead of each
    fetching the object whole from byte 0 (41 MiB upstream for 8 MiB read of 24 MiB)."""
    obj = origin.register(REVALIDATED_PATH.format("turned"), 24 * MiB, cache_control="no-store")
    with Stack(stack_dir, rules_text=RULES, prefetch=False, head_lookup=False) as stack:
        url = f"http://download.windowsupdate.com:{origin.port}{obj.path}"
        found = load_rules(stack.rules_path).key_for(url)
        assert found is not None
        cls, key = found
        with StateStore(stack.state_dir) as state:
            assert state.record_first_sight(
                key, url, cls.name, obj.size, obj.etag, obj.last_modified,
                due_at=time.time() + 3600,
            )  # fmt: skip
            bits_download(
                stack.proxy_url, url, size=obj.size, verify=obj.content, stop_after=MiB,
                timeout=120,
            )  # fmt: skip
            record = wait_until(
                lambda: state.get(key),
                lambda r: r is not None and r.state is ObjectState.PARKED,
                timeout=10,
                awaiting="the record parked by the ICAP service",
            )
        assert record is not None and record.last_error is not None
        assert "no-store" in record.last_error
        time.sleep(1.5)  # the helper remembers a "yes" for 1 s
        mark = len(origin.requests(obj.path))
        sent = origin.bytes_sent(obj.path)
        bits_download(
            stack.proxy_url, url, size=obj.size, verify=obj.content, stop_after=8 * MiB,
            timeout=120,
        )  # fmt: skip
        later = [r for r in origin.requests(obj.path)[mark:] if r.method == "GET"]
        assert later and all(r.range and r.range != "bytes=0-" for r in later), later
        assert origin.bytes_sent(obj.path) - sent == 8 * MiB
