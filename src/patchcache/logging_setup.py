"""Log output of the services: `--log-format text|json`, and no URL query in any line.

JSON: one object per line with ``ts`` (UTC, ISO 8601), ``level``, ``service``, ``logger``,
``event``, ``message`` and, when the line is about one object, ``class`` and ``key``, plus the
event's own fields (``percent``, ``rate_bytes_per_second``, ``eta_seconds``...). A call site
names its event and fields with `event()`::

    log.info("%s: complete", key, extra=event("fill_complete", cls="debian", key=key, bytes=n))

Lines without one get ``"event": "log"``.

Redaction (both formats): a URL's query string may carry a token (signed CDN URLs, private
mirrors' keys), so every ``scheme://...?query`` in a message, a field or a traceback is cut at
its ``?``. Store-ID keys carry no query.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "configure_logging", "event", "redact"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")

_QUERY_RE = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")
_EVENT_ATTR = "patchcache_event"
_FIELDS_ATTR = "patchcache_fields"


def redact(text: str) -> str:
    """`text` with the query of every URL in it removed."""
    if "?" not in text:
        return text
    return _QUERY_RE.sub(r"\1", text)


def event(
    name: str, *, cls: str | None = None, key: str | None = None, **fields: object
) -> dict[str, object]:
    """The ``extra=`` of a log call: its event name, class, key and other fields."""
    data: dict[str, object] = dict(fields)
    if cls is not None:
        data["class"] = cls
    if key is not None:
        data["key"] = key
    return {_EVENT_ATTR: name, _FIELDS_ATTR: data}


def _clean(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, object] = getattr(record, _FIELDS_ATTR, None) or {}
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "pid": record.process,
            "logger": record.name,
            "event": getattr(record, _EVENT_ATTR, None) or "log",
            "message": redact(record.getMessage()),
        }
        for name, value in fields.items():
            doc.setdefault(name, _clean(value))
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(
    log_format: str,
    *,
    service: str,
    level: int = logging.INFO,
    text_format: str = "%(asctime)s %(name)s %(message)s",
    stream: TextIO | None = None,
) -> None:
    """Send the root logger's records to `stream` (stderr) in `log_format`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(service) if log_format == "json" else _RedactingFormatter(text_format)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
