"""The report log lines of `patchcache squid-conf`, and the testbed keeping them in its work dir."""

from __future__ import annotations

from pathlib import Path

from patchcache.report.parse import PATCHCACHE_LOGFORMAT
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.testbed.squid import SquidInstance, confine_access_logs

RULES = load_rules(None)


def _access_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("access_log", "logformat"))]


def test_default_adds_the_report_log_and_keeps_the_default_access_log() -> None:
    lines = _access_lines(render_squid_conf(RULES, ConfOptions()))
    assert lines == [
        f"logformat patchcache {PATCHCACHE_LOGFORMAT}",
        "access_log daemon:/var/log/squid/patchcache.log patchcache",
        "access_log daemon:/var/log/squid/access.log squid",
    ]


def test_report_log_options() -> None:
    assert _access_lines(render_squid_conf(RULES, ConfOptions(report_log=None))) == []
    lines = _access_lines(
        render_squid_conf(
            RULES, ConfOptions(report_log=Path("/srv/logs/pc.log"), keep_access_log=False)
        )
    )
    assert lines[1:] == ["access_log daemon:/srv/logs/pc.log patchcache"]


def test_testbed_confines_access_logs(tmp_path: Path) -> None:
    body = (
        "acl x src all\n"
        "access_log daemon:/var/log/squid/patchcache.log patchcache\n"
        "access_log daemon:/var/log/squid/access.log squid\n"
        f"access_log stdio:{tmp_path}/logs/mine.log squid\n"
        "access_log none\n"
    )
    out = confine_access_logs(body, tmp_path).splitlines()
    assert out[0] == "acl x src all"
    assert out[1] == f"access_log stdio:{tmp_path}/logs/patchcache.log patchcache"
    assert out[2].startswith("# testbed: dropped")
    assert out[3] == f"access_log stdio:{tmp_path}/logs/mine.log squid"
    assert out[4] == "access_log none"


def test_testbed_config_never_names_the_system_logs(tmp_path: Path) -> None:
    squid = SquidInstance(render_squid_conf(RULES, ConfOptions()), workdir=tmp_path)
    config = squid.render_config(port=3999)
    active = [line for line in config.splitlines() if not line.startswith("#")]
    assert not [line for line in active if "/var/log/squid" in line]
    assert f"access_log stdio:{tmp_path}/logs/patchcache.log patchcache" in active
