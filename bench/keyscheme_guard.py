"""Measure the key-scheme guard: its cost at every service start, and a retirement.

    python bench/keyscheme_guard.py [--records 20000] [--state-dir DIR]

1. Unchanged rules (every start of every helper): `guard_key_schemes` with the built-in packs
   on a state that already recorded them; median of 200 runs.
2. Retirement: `--records` records in each of two classes (half of them queued), then one
   class's key scheme changes: how long the guard takes, what is left expandable, and the
   longest wait of a writer in another process (an ICAP service recording first sights) while
   the guard runs: the guard's longest hold of the write lock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from patchcache.rules import load_rules
from patchcache.state import StateStore
from patchcache.state_guard import guard_key_schemes

RULES = """
packs = []
[classes.alpha]
hosts = ["a.example"]
path = '^/f/(?P<name>[^/]+)$'
key = "/f/{{name}}{{query}}"
volatile_params = [{volatile}]
[classes.beta]
hosts = ["b.example"]
"""


def writer(state_dir: Path, stop: object, result: object) -> None:
    """Record first sights of new objects; report the longest call."""
    longest = 0.0
    index = 0
    with StateStore(state_dir, timeout=60) as store:
        while not stop.is_set():  # type: ignore[attr-defined]
            start = time.perf_counter()
            store.record_first_sight(f"w{index}", "http://b.example/w", "beta", 1, None, None)
            longest = max(longest, time.perf_counter() - start)
            index += 1
            time.sleep(0.005)  # a busy ICAP service: ~200 first sights a second
    result.put((longest, index))  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    base = args.state_dir or Path(tempfile.mkdtemp(prefix="pc-guard-"))

    packs = load_rules(None)
    with StateStore(base / "unchanged") as store:
        guard_key_schemes(store, packs, print)
        runs = []
        for _ in range(200):
            start = time.perf_counter()
            guard_key_schemes(store, packs, print)
            runs.append((time.perf_counter() - start) * 1e3)
    print(f"unchanged rules ({len(packs.classes)} classes): {statistics.median(runs):.2f} ms")

    old_path, new_path = base / "old.toml", base / "new.toml"
    old_path.write_text(RULES.format(volatile='"t"'))
    new_path.write_text(RULES.format(volatile=""))
    old, new = load_rules(old_path), load_rules(new_path)
    with StateStore(base / "retire") as store:
        guard_key_schemes(store, old, print)
        for index in range(args.records):
            for host, cls in (("a.example", "alpha"), ("b.example", "beta")):
                url = f"http://{host}/f/{index}.cab?t=1"
                match = old.match(url)
                assert match is not None and match.cls.name == cls
                if index % 2:
                    store.record_first_sight(match.key, url, cls, 1000, None, None)
                else:
                    store.record_too_big(match.key, url, cls, 10**12, None, None)
        before = sum(1 for r in store.records() if r.class_name == "alpha" and r.expandable)
        stop, result = multiprocessing.Event(), multiprocessing.Queue()
        other = multiprocessing.Process(target=writer, args=(store.path, stop, result))
        other.start()
        time.sleep(1.0)
        start = time.perf_counter()
        guard_key_schemes(store, new, print)
        took = time.perf_counter() - start
        stop.set()
        longest, writes = result.get(timeout=120)
        other.join()
        records = store.records()
        after = sum(1 for r in records if r.class_name == "alpha" and r.expandable)
        kept = sum(1 for r in records if r.key.startswith("http://b"))
    print(
        f"retirement of {args.records} records (+{args.records} kept): {took:.2f} s; "
        f"stale expandable records before {before}, after {after}; other class kept {kept}; "
        f"longest write of another process meanwhile {longest * 1e3:.0f} ms ({writes} writes)"
    )


if __name__ == "__main__":
    main()
