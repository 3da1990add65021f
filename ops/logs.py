"""Structured logging: readable lines on a terminal, one JSON object per line otherwise.

Every record passes through :func:`ops.redact.redact`, so a connection string that ends
up in an exception message is masked before it is written. Extra fields given as
``log.info("...", extra={"fields": {...}})`` appear as ``key=value`` in text and as
members in JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ops.redact import redact


class _RedactingFormatter(logging.Formatter):
    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields = getattr(record, "fields", None)
        return dict(fields) if isinstance(fields, dict) else {}


class TextFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{ts} {record.levelname.lower():7s} {record.name}: {record.getMessage()}"]
        parts.extend(f"{k}={v}" for k, v in self._fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(self._fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, default=str))


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Driver chatter is not operator information.
    for noisy in ("pymongo", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
