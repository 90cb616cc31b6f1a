"""squid.conf generation stands alone: it needs the rules, never the services it configures.

`patchcache squid-conf` runs at install time and on admin boxes; a prefetcher, ICAP service or
state store that fails to import (or is slow to) must not stop it, and their modules must not
grow a dependency back on the configuration generator's internals.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import patchcache.squidconf

FORBIDDEN = ("patchcache.prefetch", "patchcache.icap_service", "patchcache.state")
PACKAGE_DIR = Path(patchcache.squidconf.__file__).parent


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


def _imported_modules(source: Path) -> set[str]:
    """Every module an import statement in `source` names, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_squidconf_module_imports_the_services() -> None:
    sources = sorted(PACKAGE_DIR.glob("*.py"))
    assert {p.name for p in sources} >= {"__init__.py", "render.py", "delay_pools.py"}
    offending = {
        f"{source.name}: {module}"
        for source in sources
        for module in _imported_modules(source)
        if _forbidden(module)
    }
    assert offending == set()


def test_importing_squidconf_loads_none_of_the_services() -> None:
    # A fresh interpreter: this test process has imported everything already.
    code = (
        "import sys, patchcache.squidconf\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('patchcache')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(result.stdout.split())
    assert "patchcache.squidconf.render" in loaded
    assert {m for m in loaded if _forbidden(m)} == set()
