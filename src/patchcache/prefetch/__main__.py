"""`python -m patchcache.prefetch prefetch|status|channel ...`: the prefetcher's commands on
their own (the same ones `patchcache` registers), for tests and for running the sidecar without
the rest of the CLI."""

from __future__ import annotations

import click

from patchcache.prefetch.cli import channel_group, prefetch_cmd, status_cmd


@click.group()
def prefetch_main() -> None:
    """The patchcache prefetcher sidecar."""


prefetch_main.add_command(prefetch_cmd)
prefetch_main.add_command(status_cmd)
prefetch_main.add_command(channel_group)

if __name__ == "__main__":
    prefetch_main()
