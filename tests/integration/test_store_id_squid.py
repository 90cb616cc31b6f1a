"""The store-ID helper (`patchcache store-id`) driven by a real Squid 5.7.

What is checked here is what Squid does with the helper's answers, never the helper alone: URL
variants of one object become one cache entry (one origin fetch, then `TCP_HIT/206` for ranges on
any variant); look-alike hosts are never merged into a trusted key; a helper that dies, or that
starts without its rules, never stops Squid from serving; both helper line formats
(`concurrency=0` and `>0`) work; and the `expand=1` pair of a reply reaches Squid as a
transaction annotation that drops the Range header upstream.

Upstream traffic is counted at the origin (access.log misreports joins, see
docs/squid-behaviour.md); access.log is read only for the result codes of requests made one
at a time.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from support.client_threads import run_in_threads
from support.fixtures import SquidFactory
from support.suite_stack import (
    StackFactory,
    codes_since,
    running_squid,
    squid_children,
    wait_swapped_out,
)
from support.wu_fetches import (
    assert_variants_not_merged,
    get_range,
    get_whole,
    origin_url,
    wu_object,
)

from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.testbed import MiB, Origin
from patchcache.testbed.squid_logs import wait_for_lines
from patchcache.testbed.stack import patchcache_binary

pytestmark = pytest.mark.squid

RULES = """\
[settings]
default_max_object_size = "8 MiB"
"""
GUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
HELPER = "patchcache store-id"


def origin_requests(origin: Origin, *paths: str) -> int:
    return sum(len(origin.requests(path)) for path in paths)


# -- (1) URL variants of one object -----------------------------------------------------------


def test_wu_host_and_prefix_variants_share_one_entry(
    origin: Origin, stack_factory: StackFactory
) -> None:
    obj, c_path = wu_object(origin, 4 * MiB, "variants-wu")
    # First sight from the first 206 (no helper HEAD): test_first_range_size.py covers that.
    stack = stack_factory(RULES, head_lookup=False)
    squid = running_squid(stack)
    get_whole(stack.proxy_url, origin_url(origin, "download.windowsupdate.com", obj.path), obj)
    mark = len(squid.wait_for_access_lines(1))
    au = origin_url(origin, "au.download.windowsupdate.com", c_path)
    get_range(stack.proxy_url, au, obj, MiB, 2 * MiB - 1)
    get_range(
        stack.proxy_url,
        origin_url(origin, "wsus.ds.download.windowsupdate.com", c_path),
        obj,
        obj.size - 500,
        obj.size - 1,
    )
    assert codes_since(squid, mark, 2) == ["TCP_HIT/206", "TCP_HIT/206"]
    assert origin_requests(origin, obj.path, c_path) == 1
    assert origin.bytes_sent(obj.path) + origin.bytes_sent(c_path) == obj.size


def test_delivery_optimization_query_variants_share_one_entry(
    origin: Origin, stack_factory: StackFactory
) -> None:
    obj = origin.register(f"/filestreamingservice/files/{GUID}", 3 * MiB, seed="variants-do")
    # First sight from the first 206 (no helper HEAD): test_first_range_size.py covers that.
    stack = stack_factory(RULES, head_lookup=False)
    squid = running_squid(stack)
    first = f"{obj.path}?P1=1800000001&P2=404&P3=2&P4=c2lnbmF0dXJlLWE%3d"
    other = f"{obj.path}?P1=1800009999&P2=404&P3=2&P4=b3RoZXItc2lnbmF0dXJl"
    get_whole(stack.proxy_url, origin_url(origin, "tlu.dl.delivery.mp.microsoft.com", first), obj)
    mark = len(squid.wait_for_access_lines(1))
    get_range(
        stack.proxy_url,
        origin_url(origin, "2.tlu.dl.delivery.mp.microsoft.com", other),
        obj,
        0,
        MiB - 1,
    )
    get_range(
        stack.proxy_url,
        origin_url(origin, "dl.delivery.mp.microsoft.com", other),
        obj,
        2 * MiB,
        3 * MiB - 1,
    )
    assert codes_since(squid, mark, 2) == ["TCP_HIT/206", "TCP_HIT/206"]
    assert len(origin.requests(obj.path)) == 1
    assert origin.bytes_sent(obj.path) == obj.size


# -- (2) look-alike hosts are not trusted -----------------------------------------------------

LOOK_ALIKES = (
    "download.windowsupdate.com.example.net",
    "evilwindowsupdate.com",
    "windowsupdate.com.example.net",
    "download-windowsupdate.com",
)


def check_look_alikes(proxy: str, origin: Origin) -> None:
    """An impostor serves other bytes under the genuine digest name (its own origin, so the
    bytes differ by host). Neither order of arrival lets one answer for the other."""
    with Origin() as impostor:
        for number, fake_host in enumerate(LOOK_ALIKES):
            genuine, c_path = wu_object(origin, 2 * MiB, f"genuine-{number}")
            fake = impostor.register(genuine.path, 2 * MiB, seed=f"impostor-{number}")
            genuine_url = origin_url(origin, "download.windowsupdate.com", genuine.path)
            fake_url = origin_url(impostor, fake_host, genuine.path)
            if number % 2 == 0:
                # Genuine first: the impostor's fetch must still reach the impostor.
                get_whole(proxy, genuine_url, genuine)
                get_whole(proxy, fake_url, fake)
            else:
                # Impostor first (a poisoning attempt): the genuine client gets genuine bytes.
                get_whole(proxy, fake_url, fake)
                get_whole(proxy, genuine_url, genuine)
            assert len(impostor.requests(fake.path)) == 1
            assert len(origin.requests(genuine.path)) == 1
            # The genuine key holds the genuine bytes, for every trusted variant.
            variant_url = origin_url(origin, "au.download.windowsupdate.com", c_path)
            get_range(proxy, variant_url, genuine, 0, MiB - 1)
            assert origin_requests(origin, genuine.path, c_path) == 1
            # A range on the impostor is answered from the impostor's bytes, never the key.
            get_range(proxy, fake_url, fake, MiB, 2 * MiB - 1)


def test_look_alike_hosts_are_never_merged(origin: Origin, stack_factory: StackFactory) -> None:
    """With the generated config: `store_id_access` (dstdomain) already keeps them away."""
    stack = stack_factory(RULES, hosts=dict.fromkeys(LOOK_ALIKES, "127.0.0.1"), head_lookup=False)
    check_look_alikes(stack.proxy_url, origin)


def test_helper_itself_refuses_look_alike_hosts(
    origin: Origin, squid_factory: SquidFactory
) -> None:
    """Defence in depth: even when Squid sends every URL to the helper, it maps only the
    classes' trusted hosts (`*.windowsupdate.com` is a label boundary, not a suffix)."""
    body = f"""\
store_id_program {patchcache_binary()} store-id
store_id_children 2 startup=1 idle=1 concurrency=10
store_id_bypass off
store_id_access allow all
"""
    squid = squid_factory(body, hosts=dict.fromkeys(LOOK_ALIKES, "127.0.0.1"))
    check_look_alikes(squid.proxy_url, origin)


# -- (3) a helper killed mid-run --------------------------------------------------------------


def test_killed_helper_is_restarted_and_squid_keeps_serving(
    origin: Origin, stack_factory: StackFactory
) -> None:
    obj, c_path = wu_object(origin, 2 * MiB, "killed-helper")
    # First sight from the first 206 (no helper HEAD): test_first_range_size.py covers that.
    stack = stack_factory(RULES, head_lookup=False)
    squid = running_squid(stack)
    get_whole(stack.proxy_url, origin_url(origin, "download.windowsupdate.com", obj.path), obj)
    targets = [
        origin_url(origin, "au.download.windowsupdate.com", c_path),
        origin_url(origin, "download.windowsupdate.com", obj.path),
    ]
    done = 0
    errors: list[BaseException] = []
    progress = threading.Condition()

    def client() -> None:
        nonlocal done
        try:
            for number in range(60):
                first = (number * 65536) % (obj.size - 4096)
                get_range(stack.proxy_url, targets[number % 2], obj, first, first + 4095)
                with progress:
                    done += 1
                    progress.notify_all()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=client, name="ranges-during-kill")
    thread.start()
    with progress:
        assert progress.wait_for(lambda: done >= 20 or bool(errors), timeout=30)
    old = squid_children(squid, HELPER)
    assert old, "no store-id helper found among Squid's children"
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert not errors, errors
    assert done == 60
    # Squid replaced the helper and the new one maps variants again: a hit, no new fetch.
    assert squid.running
    mark = len(squid.wait_for_access_lines(61))
    get_range(stack.proxy_url, targets[0], obj, 0, MiB - 1)
    assert codes_since(squid, mark, 1) == ["TCP_HIT/206"]
    new = squid_children(squid, HELPER)
    assert new and not set(new) & set(old)
    log = squid.cache_log_text()
    assert "store_id #Hlpr" in log and "exited" in log
    assert "FATAL" not in log


# -- (4) a helper without its rules -----------------------------------------------------------


@pytest.mark.parametrize(
    "rules_text", [None, "[classes.windows-update\nbroken = "], ids=["missing", "not-toml"]
)
def test_helper_without_rules_answers_err_and_squid_serves(
    origin: Origin, squid_factory: SquidFactory, proxy_dir: Path, rules_text: str | None
) -> None:
    rules_path = proxy_dir / "rules.toml"
    if rules_text is not None:
        rules_path.write_text(rules_text)
    # The config an admin would get, pointing at rules the helper cannot load.
    body = render_squid_conf(
        load_rules(None),
        ConfOptions(
            patchcache_bin=patchcache_binary(),
            rules_path=rules_path,
            store_id_children=2,
            concurrency=5,
        ),
    )
    squid = squid_factory(body)
    obj, c_path = wu_object(origin, MiB, "no-rules")
    # ERR means "keep the URL as the key": the two URLs are two entries.
    assert_variants_not_merged(squid.proxy_url, origin, obj, c_path)
    assert squid.wait_for_cache_log("rules not loaded, answering ERR", timeout=10)
    log = squid.cache_log_text()
    assert "FATAL" not in log and "exited" not in log
    assert squid.running


# -- (5) both helper line formats -------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [0, 5])
def test_helper_works_with_and_without_channel_ids(
    origin: Origin, squid_factory: SquidFactory, concurrency: int
) -> None:
    """`concurrency=0` sends `URL extras`, `>0` sends `ID URL extras` (replies must echo the
    ID): the same helper serves both. Several clients at once make Squid queue or multiplex."""
    body = f"""\
store_id_program {patchcache_binary()} store-id
store_id_children 3 startup=1 idle=1 concurrency={concurrency}
store_id_bypass off
acl wu dstdomain .windowsupdate.com
store_id_access allow wu
store_id_access deny all
"""
    squid = squid_factory(body)
    obj, c_path = wu_object(origin, 2 * MiB, f"channels-{concurrency}")
    get_whole(squid.proxy_url, origin_url(origin, "download.windowsupdate.com", obj.path), obj)
    squid.wait_for_access_lines(1)
    hosts = ("au.download.windowsupdate.com", "wsus.ds.download.windowsupdate.com")

    def client(number: int) -> None:
        for step in range(8):
            first = (number * 8 + step) * 16384
            target = origin_url(origin, hosts[number % 2], c_path if step % 2 else obj.path)
            get_range(squid.proxy_url, target, obj, first, first + 16383)

    run_in_threads(client, 6)
    codes = codes_since(squid, 1, 48)
    assert codes == ["TCP_HIT/206"] * 48, codes
    assert origin_requests(origin, obj.path, c_path) == 1
    assert "FATAL" not in squid.cache_log_text()


# -- (6) expand=1 becomes a Squid annotation --------------------------------------------------

NOTES_LOG = """\
logformat pc_notes %ru sid=%note{store-id} expand=%note{expand}
access_log stdio:{logs}/notes.log pc_notes
"""


def test_expand_reply_reaches_squid_as_a_note(origin: Origin, stack_factory: StackFactory) -> None:
    """The first range is a miss that passes through (nothing known yet; the ICAP service
    records its first sight and queues a job, prefetcher off). From then on the helper answers
    `OK store-id=... expand=1`: Squid logs the note, drops the Range upstream (one whole fetch,
    stored) and still answers the client's range with a 206."""
    obj, c_path = wu_object(origin, 4 * MiB, "expand-note")
    stack = stack_factory(RULES, extra_config=NOTES_LOG, head_lookup=False)
    squid = running_squid(stack)
    first_url = origin_url(origin, "download.windowsupdate.com", obj.path)
    get_range(stack.proxy_url, first_url, obj, 0, MiB - 1)
    assert len(stack.status()["queue"]) == 1
    get_range(
        stack.proxy_url,
        origin_url(origin, "au.download.windowsupdate.com", c_path),
        obj,
        MiB,
        2 * MiB - 1,
    )
    digest = obj.path.rsplit("_", 1)[1].split(".")[0]
    wait_swapped_out(squid, digest)
    mark = len(squid.wait_for_access_lines(2))
    get_range(stack.proxy_url, first_url, obj, 3 * MiB, 4 * MiB - 1)
    assert codes_since(squid, mark, 1) == ["TCP_HIT/206"]

    records = origin.requests(obj.path) + origin.requests(c_path)
    assert [(r.path, r.range) for r in records] == [
        (obj.path, f"bytes=0-{MiB - 1}"),
        (c_path, None),  # expanded: the whole object, once
    ]
    assert records[1].body_bytes == obj.size
    # Squid writes each log's line for a transaction in turn: the notes line may land a moment
    # after the access.log line waited for above.
    notes = wait_for_lines(squid.workdir / "logs" / "notes.log", 3, timeout=10)
    assert len(notes) == 3, notes
    key = notes[0].split()[1]
    assert key.startswith("sid=http://windows-update.") and key.endswith(digest), key
    assert [line.split()[1:] for line in notes] == [
        [key, "expand=-"],
        [key, "expand=1"],
        [key, "expand=1"],
    ]
