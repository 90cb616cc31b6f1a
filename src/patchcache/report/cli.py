"""`patchcache report`: read the access logs, print or write the report."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import click

from patchcache.cli_options import RULES_OPTION, load_rules_or_exit
from patchcache.errors import ConfigError

_RELATIVE = re.compile(r"^(\d+)([hdw])$")
_EPOCH = re.compile(r"^\d{9,11}(?:\.\d*)?$")
_UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, option: str, now: float | None = None) -> float:
    """ISO date or date-time (UTC unless it carries an offset), relative (24h, 7d, 2w), or a
    Unix timestamp as Squid logs it (1796000000.123)."""
    if _EPOCH.match(text):
        return float(text)
    relative = _RELATIVE.match(text)
    if relative:
        base = dt.datetime.now(dt.UTC).timestamp() if now is None else now
        return base - int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a date (2026-11-30, 2026-11-30T12:00, 2026-11-30T12:00+01:00) "
            "nor a relative time (24h, 7d, 2w) nor a Unix timestamp",
            field=option,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@click.command("report")
@click.option(
    "--access-log",
    "access_logs",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A Squid access log (plain, rotated or compressed); repeat for several. Default: "
    "/var/log/squid/patchcache.log if Squid writes it, else /var/log/squid/access.log.",
)
@click.option(
    "--since",
    default=None,
    help="Start: 2026-11-30, 2026-11-30T12:00, 7d, 24h, or a Unix timestamp.",
)
@click.option("--until", default=None, help="End (exclusive), same forms as --since.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "html"]),
    default="text",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here instead of standard output.",
)
@click.option("--top", default=10, show_default=True, help="Top objects per class.")
@RULES_OPTION
def report_cmd(
    access_logs: tuple[Path, ...],
    since: str | None,
    until: str | None,
    fmt: str,
    out: Path | None,
    top: int,
    rules_path: Path | None,
) -> None:
    """What the cache served and saved, per class, from Squid's access logs."""
    from patchcache.report.run import default_logs, make_report

    rules = load_rules_or_exit(rules_path)
    try:
        start = None if since is None else parse_when(since, "--since")
        end = None if until is None else parse_when(until, "--until")
        report = make_report(
            list(access_logs) or default_logs(), rules, since=start, until=end, top=top
        )
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    if fmt == "json":
        text = json.dumps(report, indent=2) + "\n"
    elif fmt == "html":
        from patchcache.report.render_html import render_html

        text = render_html(report)
    else:
        from patchcache.report.render_text import render_text

        text = render_text(report, top=min(top, 5))
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"report: wrote {out}", err=True)
