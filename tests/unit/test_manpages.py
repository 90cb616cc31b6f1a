"""scripts/gen-manpages.py: the Debian package's man pages, one per command, from the commands."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import click
import pytest

from patchcache.cli import main as root

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen-manpages.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_manpages", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _command_paths(command: click.Command, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    found = [path]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += _command_paths(sub, (*path, name))
    return found


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    assert _generator().main(["gen-manpages.py", str(out)]) == 0
    return out


def test_one_page_per_command_nested_groups_included(pages: Path) -> None:
    expected = {"-".join(p) + ".1" for p in _command_paths(root, ("patchcache",))}
    assert "patchcache-channel-add.1" in expected
    assert {p.name for p in pages.iterdir()} == expected


def test_every_option_of_a_command_is_on_its_page(pages: Path) -> None:
    text = (pages / "patchcache-prefetch.1").read_text()
    assert text.startswith(".TH PATCHCACHE-PREFETCH 1 ")
    assert ".B patchcache prefetch" in text
    ctx = click.Context(root.commands["prefetch"], info_name="prefetch")
    for param in root.commands["prefetch"].get_params(ctx):
        for flag in param.opts:
            assert flag.replace("-", "\\-") in text, flag


def test_group_page_names_each_command_page(pages: Path) -> None:
    text = (pages / "patchcache.1").read_text()
    for name in root.commands:
        escaped = name.replace("-", "\\-")
        assert f"\\fBpatchcache\\-{escaped}\\fR(1)" in text


def test_date_comes_from_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert _generator().main(["gen-manpages.py", str(tmp_path)]) == 0
    assert '"2023-11-14"' in (tmp_path / "patchcache.1").read_text().splitlines()[0]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_pages_render_without_groff_warnings(pages: Path) -> None:
    for page in sorted(pages.iterdir()):
        result = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0 and result.stderr == "", (page.name, result.stderr)
