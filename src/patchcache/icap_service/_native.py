"""The one place that decides between the native scanner (_scan.c) and Python.

Each name below is the native function, or None when the scanner is not built or
``PATCHCACHE_PURE_PYTHON=1`` leaves it unused (to rule it out when chasing a problem, or to
measure). Callers read them at call time as ``_native.NAME`` (a test can set them to None to run
the Python twins) and fall back to their Python twin when the name is None or when the native
function returns None: it answers only for input it accepts, with what the twin returns, and
leaves anything else to the twin to parse and report.

`maker` builds the frozen objects made for every request: natively in one call, else with the
slots' own setters.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

_T = TypeVar("_T")

# (ICAP fields as text, Encapsulated value, Preview, allow 204, allow 206, keep-alive)
IcapFields = tuple[str, str | None, int | None, bool, bool, bool]


def _load_scanner() -> ModuleType | None:
    if os.environ.get("PATCHCACHE_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from patchcache.icap_service import _scan
    except ImportError:  # pragma: no cover - depends on how the package was built
        return None
    return _scan


# The native module itself (tests call its functions directly), or None.
scanner = _load_scanner()

# The native functions (see _scan.pyi), or None. Their Python twins: icap_fields ->
# _readers.scan_icap_fields, encapsulated -> _encapsulated.parse_encapsulated_python,
# fields -> FIELD.findall in _headers, http_*_head -> _readers.split_http_*_head.
icap_fields: Callable[[bytes, int, int], IcapFields | None] | None = None
encapsulated: Callable[[str, str], tuple[int | None, int | None, str, int] | None] | None = None
fields: Callable[[str], tuple[tuple[tuple[str, str], ...], dict[str, str]] | None] | None = None
http_request_head: Callable[[bytes, int], tuple[str, str, str, str] | None] | None = None
http_response_head: Callable[[bytes, int], tuple[str, int, str, str] | None] | None = None
build: Callable[..., Any] | None = None
if scanner is not None:
    icap_fields = scanner.icap_fields
    encapsulated = scanner.encapsulated
    fields = scanner.fields
    http_request_head = scanner.http_request_head
    http_response_head = scanner.http_response_head
    build = scanner.build

# The names above that a test may set to None to run the Python twins.
SCANNER_FUNCTIONS = (
    "icap_fields",
    "encapsulated",
    "fields",
    "http_request_head",
    "http_response_head",
)

_new_object = object.__new__


def maker(cls: type[_T], names: tuple[str, ...]) -> Callable[..., _T]:
    """A positional constructor for the slotted, frozen class ``cls``: slots ``names`` get the
    arguments in order. The classes built for every request use it instead of their generated
    ``__init__``, which pays one ``object.__setattr__`` call per field (about 0.1 us each):
    natively one call fills every slot, else the slots' own setters do. Tests check that
    both build objects equal to the ones the classes' constructors build."""
    slots = tuple(cls.__dict__[name] for name in names)
    if build is not None:
        return functools.partial(build, cls, slots)
    setters = tuple(slot.__set__ for slot in slots)

    def make(*values: object) -> _T:
        built = _new_object(cls)
        for setter, value in zip(setters, values, strict=True):
            setter(built, value)
        return built

    return make
