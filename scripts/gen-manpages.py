#!/usr/bin/env python3
"""Write man pages for `patchcache` and each of its subcommands, from the click commands.

Usage: python scripts/gen-manpages.py OUTDIR

One page for the group (patchcache.1) and one per command, nested groups included
(patchcache-store-id.1, patchcache-channel-add.1, ...), so `man patchcache-icap` answers with
exactly what `patchcache icap --help` says. The Debian package runs this at build time with the
interpreter of the bundled environment, so the pages always match the program they ship with.
The date comes from SOURCE_DATE_EPOCH when set, for reproducible builds.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import click

SEE_ALSO_EXTRA = ("squid(8)",)


def _escape(text: str) -> str:
    """Text safe inside a groff line: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _paragraphs(text: str) -> list[str]:
    """Help text split on blank lines, each paragraph joined into one line."""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        joined = " ".join(line.strip() for line in block.splitlines() if line.strip())
        if joined:
            out.append(joined)
    return out


def _walk(
    command: click.Command, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in _subcommands(command):
            found += _walk(sub, (*path, name))
    return found


def _subcommands(group: click.Group) -> list[tuple[str, click.Command]]:
    """A group's commands through its own lookup: some are loaded only when asked for."""
    ctx = click.Context(group)
    found = []
    for name in sorted(group.list_commands(ctx)):
        sub = group.get_command(ctx, name)
        if sub is not None:
            found.append((name, sub))
    return found


def _options(command: click.Command, ctx: click.Context) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            rows.append(record)
    return rows


def render(
    path: tuple[str, ...],
    command: click.Command,
    root: click.Command,
    date: str,
    version: str,
    all_pages: list[str],
) -> str:
    """The groff source of one page."""
    name = "-".join(path)
    invocation = " ".join(path)
    parent = None
    ctx = click.Context(root, info_name=path[0])
    for word in path[1:]:
        parent = ctx
        group = ctx.command
        assert isinstance(group, click.Group)
        sub = group.get_command(ctx, word)
        assert sub is not None
        ctx = click.Context(sub, info_name=word, parent=parent)
    short = command.get_short_help_str(limit=200)
    lines = [
        f'.TH {name.upper()} 1 "{date}" "patchcache {version}" "User Commands"',
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(short)}",
        ".SH SYNOPSIS",
        f".B {_escape(invocation)}",
        _escape(" ".join(command.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
    ]
    for number, paragraph in enumerate(_paragraphs(command.help or short)):
        if number:
            lines.append(".PP")
        lines.append(_escape(paragraph))
    if isinstance(command, click.Group) and _subcommands(command):
        lines.append(".SH COMMANDS")
        for sub_name, sub in _subcommands(command):
            lines.append(".TP")
            lines.append(f".B {_escape(sub_name)}")
            lines.append(_escape(sub.get_short_help_str(limit=200)))
            lines.append(f"See \\fB{_escape(name)}\\-{_escape(sub_name)}\\fR(1).")
    options = _options(command, ctx)
    if options:
        lines.append(".SH OPTIONS")
        for flags, help_text in options:
            lines.append(".TP")
            lines.append(f".B {_escape(flags)}")
            lines.append(_escape(" ".join(help_text.split())))
    related = [p for p in all_pages if p != name and (p.startswith(name + "-") or p == path[0])]
    if len(path) > 1:
        parent_name = "-".join(path[:-1])
        if parent_name not in related:
            related.insert(0, parent_name)
    see_also = [f"\\fB{_escape(p)}\\fR(1)" for p in related]
    see_also += [f"\\fB{_escape(p.split('(')[0])}\\fR({p.split('(')[1]}" for p in SEE_ALSO_EXTRA]
    lines.append(".SH SEE ALSO")
    lines.append(", ".join(see_also))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gen-manpages.py OUTDIR", file=sys.stderr)
        return 2
    from patchcache import __version__
    from patchcache.cli import main as root

    outdir = Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    moment = (
        datetime.datetime.fromtimestamp(epoch, datetime.UTC)
        if epoch
        else datetime.datetime.now(datetime.UTC)
    )
    date = moment.strftime("%Y-%m-%d")
    pages = _walk(root, ("patchcache",))
    names = ["-".join(path) for path, _ in pages]
    for path, command in pages:
        page = outdir / f"{'-'.join(path)}.1"
        page.write_text(render(path, command, root, date, __version__, names), encoding="utf-8")
    print(f"gen-manpages: {len(pages)} pages in {outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
