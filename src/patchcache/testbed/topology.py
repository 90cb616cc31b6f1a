"""More than one proxy on loopback: a tree (branches under a parent) and a CARP farm.

Each box is a whole :class:`~patchcache.testbed.stack.Stack` (its own Squid, store-ID helper,
ICAP service, prefetcher and state directory), configured by `patchcache squid-conf` exactly as an
admin would (`--parent` for a branch, `--carp-back` for a farm's front). Every link between two
Squids goes through a :class:`~patchcache.testbed.relay.CountingRelay`, so the bytes each link
carries are measured on the wire; the origin counts what the Internet link carries.

The Squid-only profiles (`default`, `tuned`) build the same topology without patchcache: plain
`cache_peer ... parent` for a branch, plain CARP (whole-URL hash) for the farm, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from patchcache.rules import load_rules
from patchcache.squidconf import render_farm_front
from patchcache.testbed.lifecycle import StartStop
from patchcache.testbed.ports import LOOPBACK
from patchcache.testbed.relay import CountingRelay
from patchcache.testbed.squid import SquidInstance
from patchcache.testbed.stack import Profile, Stack


def _stop_all(stacks: list[Stack], relays: list[CountingRelay]) -> None:
    for stack in stacks:
        if stack.squid is not None:
            stack.squid.request_stop()  # in parallel: each Squid needs about 2 s to exit
    for stack in stacks:
        stack.stop()
    for relay in relays:
        relay.stop()


@dataclass
class Tree(StartStop):
    """One parent (head office) with the origin behind it and ``branches`` children under it."""

    workdir: Path
    origin_port: int
    profile: Profile = "patchcache"
    rules_text: str = ""
    branches: int = 1
    cache_size_mb: int = 1024
    # False: branches as generated before `--parent` (store-ID helper only: no ICAP, no
    # prefetcher, so they never learn a size and never expand), for comparison.
    branch_suite: bool = True
    parent: Stack | None = None
    children: list[Stack] = field(default_factory=list)
    links: list[CountingRelay] = field(default_factory=list)  # links[i]: child i <-> parent

    def start(self) -> Tree:
        try:
            self.parent = Stack(
                self.workdir / "parent",
                profile=self.profile,
                rules_text=self.rules_text,
                origin_port=self.origin_port,
                cache_size_mb=self.cache_size_mb,
            ).start()
            assert self.parent.squid is not None
            for number in range(self.branches):
                link = CountingRelay(self.parent.squid.port).start()
                self.links.append(link)
                child = Stack(
                    self.workdir / f"branch{number}",
                    profile=self.profile,
                    rules_text=self.rules_text,
                    cache_size_mb=self.cache_size_mb,
                    parent_url=f"http://{LOOPBACK}:{link.port}",
                    icap=self.branch_suite,
                    prefetch=self.branch_suite,
                )
                self.children.append(child)
                child.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stacks = [*self.children, *([self.parent] if self.parent else [])]
        _stop_all(stacks, self.links)

    def stacks(self) -> list[Stack]:
        return [*([self.parent] if self.parent else []), *self.children]

    def wait_queues_drained(self, timeout: float = 120.0) -> bool:
        if self.profile != "patchcache":
            return True
        return all(stack.wait_queue_drained(timeout) for stack in self.stacks())


@dataclass
class Farm(StartStop):
    """A front Squid with CARP over ``backs`` back-end boxes, the origin behind each back end."""

    workdir: Path
    origin_port: int
    profile: Profile = "patchcache"
    rules_text: str = ""
    backs: int = 3
    cache_size_mb: int = 1024
    # True: Squid's own whole-URL CARP at the front even with patchcache on the back ends (what
    # a farm gets without `--carp-back`), for comparison.
    plain_front: bool = False
    back_stacks: list[Stack] = field(default_factory=list)
    links: list[CountingRelay] = field(default_factory=list)  # links[i]: front <-> back i
    front: SquidInstance | None = None

    @property
    def proxy_url(self) -> str:
        assert self.front is not None, "farm not started"
        return self.front.proxy_url

    def start(self) -> Farm:
        try:
            for number in range(self.backs):
                back = Stack(
                    self.workdir / f"back{number}",
                    profile=self.profile,
                    rules_text=self.rules_text,
                    origin_port=self.origin_port,
                    cache_size_mb=self.cache_size_mb,
                )
                self.back_stacks.append(back)
                back.start()
                assert back.squid is not None
                self.links.append(CountingRelay(back.squid.port).start())
            self.front = SquidInstance(
                self.front_config(),
                workdir=self.workdir / "front",
                cache_size_mb=64,
            )
            self.front.start()
        except BaseException:
            self.stop()
            raise
        return self

    def front_config(self) -> str:
        urls = tuple(f"http://{LOOPBACK}:{link.port}" for link in self.links)
        if self.profile == "patchcache" and not self.plain_front:
            self.workdir.mkdir(parents=True, exist_ok=True)
            rules_path = self.workdir / "front-rules.toml"
            rules_path.write_text(self.rules_text)
            return render_farm_front(load_rules(rules_path), urls)
        # Squid's own farm: CARP on the whole URL, everything through the back ends.
        lines = [
            f"cache_peer {LOOPBACK} parent {link.port} 0 no-query no-digest carp name=back{n}"
            for n, link in enumerate(self.links)
        ]
        return "\n".join([*lines, "never_direct allow all", "cache deny all"]) + "\n"

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        _stop_all(self.back_stacks, self.links)

    def wait_queues_drained(self, timeout: float = 120.0) -> bool:
        if self.profile != "patchcache":
            return True
        return all(stack.wait_queue_drained(timeout) for stack in self.back_stacks)
