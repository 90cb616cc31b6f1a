"""The options every command shares are declared once (patchcache.cli_options) and behave alike.

Every command that reads the rules takes the same ``--rules`` and, when the rules do not load,
says which file and field in one line and exits with status 2; every command that names the
shared state takes the same three state options; both services with a Prometheus endpoint take
the same ``--metrics-listen``.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from patchcache.cli import main
from patchcache.cli_options import (
    METRICS_LISTEN_HELP,
    RULES_HELP,
    STATE_HELP,
    STATE_PASSWORD_FILE_HELP,
)

HELPERS = {"store-id", "url-rewrite"}


def _commands() -> dict[str, click.Command]:
    """Every leaf command by its path ("channel add"), through the group's own lookup."""
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub, (*path, name))
        else:
            found[" ".join(path)] = command

    walk(main, ())
    return found


def _option(command: click.Command, flag: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and flag in p.opts), None)


def test_rules_and_state_options_are_the_same_everywhere() -> None:
    with_rules, with_state = set(), set()
    for path, command in _commands().items():
        rules = _option(command, "--rules")
        if rules is not None:
            with_rules.add(path)
            assert (rules.name, rules.help, rules.default) == ("rules_path", RULES_HELP, None)
            # A helper's --rules is a plain string: click checks nothing that could make it exit.
            assert (rules.type == click.STRING) == (path in HELPERS), path
        state = _option(command, "--state")
        if state is not None:
            with_state.add(path)
            assert (state.help, state.metavar) == (STATE_HELP, "DIR|URL"), path
            password = _option(command, "--state-password-file")
            assert password is not None and password.help == STATE_PASSWORD_FILE_HELP, path
            assert _option(command, "--state-dir") is not None, path
    assert with_rules >= {"explain", "squid-conf", "icap", "prefetch", "channel add", "report"}
    assert with_state >= {"store-id", "squid-conf", "icap", "prefetch", "status", "channel add"}


def test_metrics_listen_is_the_same_on_both_services() -> None:
    with_metrics = set()
    for path, command in _commands().items():
        option = _option(command, "--metrics-listen")
        if option is not None:
            with_metrics.add(path)
            assert (option.name, option.help, option.metavar, option.default) == (
                "metrics_listen",
                METRICS_LISTEN_HELP,
                "HOST:PORT",
                None,
            ), path
    assert with_metrics == {"icap", "prefetch"}


@pytest.mark.parametrize(
    "args",
    [["icap"], ["prefetch", "--proxy", "http://127.0.0.1:9", "--state-dir", "{tmp}/state"]],
    ids=["icap", "prefetch"],
)
@pytest.mark.parametrize("listen", ["9464", "127.0.0.1:port", ":9464", "127.0.0.1:65536"])
def test_a_malformed_metrics_listen_is_a_usage_error_before_anything_starts(
    args: list[str], listen: str, tmp_path: Path
) -> None:
    command = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(main, [*command, "--metrics-listen", listen])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--metrics-listen'" in result.output
    assert f"{listen!r}: use HOST:PORT, e.g. 127.0.0.1:9464" in result.output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["explain", "http://a.example/x"],
        ["squid-conf"],
        ["report", "--access-log", "{tmp}/access.log"],
        ["icap", "--listen", "127.0.0.1:0"],
        ["prefetch", "--proxy", "http://127.0.0.1:9", "--state-dir", "{tmp}/state"],
        ["channel", "add", "--state-dir", "{tmp}/state", "http://a.example/x"],
    ],
    ids=lambda args: args[0] if args[0] != "channel" else "channel add",
)
def test_rules_that_do_not_load_name_file_and_field_and_exit_2(
    args: list[str], tmp_path: Path, root_logging: None
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[classes.foo]\nhosts = ["a.example"]\nmax_object_size = "lots"\n')
    command = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(main, [*command, "--rules", str(rules)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {rules}: class foo: field max_object_size: Value error, cannot read 'lots' "
        "as a size; write e.g. '4 GiB', '200 MB' or 1048576"
    ]
    assert not (tmp_path / "state").exists()  # nothing opened before the rules were judged


def test_check_config_lists_and_counts_the_problems_and_exits_1(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[classes.foo]\nhosts = 3\nmax_object_size = "lots"\n')
    result = CliRunner().invoke(main, ["check-config", "--rules", str(rules)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-1] == "2 problem(s)"
    assert [line.split(": ")[:4] for line in lines[:-1]] == [
        ["error", str(rules), "class foo", "field hosts"],
        ["error", str(rules), "class foo", "field max_object_size"],
    ]
