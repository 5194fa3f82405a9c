"""Logging: one namespace, structured fields, optional JSON lines, passwords redacted.

Every record of the library comes from the logger ``fastapi_dbpool`` and carries its
facts as ``extra`` fields rather than in the text, so that a log pipeline can filter
on them:

=================  =====================================================
field              meaning
=================  =====================================================
``event``          what happened: ``start``, ``stop``, ``db_error``, ...
``pool``           the Database's name (``primary``, ``replica``)
``*_s``            a duration in seconds (``waited_s``, ``held_s``)
``status``         the HTTP status answered, for request-level events
``reason``         a short machine-readable cause (``pool_exhausted``)
=================  =====================================================

The library adds no handler of its own (the application decides where logs go).
:func:`configure_logging` is the one-line set-up for an app that wants them: text,
or one JSON object a line with ``DB_LOG_JSON=true``. Both formatters replace the
password of any URL in the output by ``***``, a last line of defence in case a
driver's message repeats a connection string.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from .settings import ObservabilitySettings

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "redact_secrets"]

LOGGER_NAME = "fastapi_dbpool"

# scheme://user:password@host  ->  scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")
# key=value / "key": "value" pairs whose key names a secret.
_SECRET_FIELD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|token|secret)\b[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]+",
    re.IGNORECASE,
)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)

_INSTALLED = "_fastapi_dbpool_handler"


def redact_secrets(text: str) -> str:
    """Return *text* with URL passwords and ``password=...`` values replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _SECRET_FIELD.sub(r"\g<head>***", text)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed with ``extra=``."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single line of JSON, secrets redacted."""
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(extra_fields(record))
        if record.exc_info:
            payload["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return redact_secrets(json.dumps(payload, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``, secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as text, its ``extra`` fields appended as ``key=value``."""
        text = super().format(record)
        fields = " ".join(f"{key}={value}" for key, value in extra_fields(record).items())
        return redact_secrets(f"{text} {fields}" if fields else text)


def configure_logging(
    *,
    as_json: bool | None = None,
    level: int | str = logging.INFO,
    loggers: Iterable[str] = (LOGGER_NAME,),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send the records of *loggers* to *stream* (stderr), as JSON lines or text.

    Calling it again replaces the handler it installed before, so an app factory may
    call it every time it runs. The loggers stop propagating to the root logger, so
    a record is written once even when the root logger has handlers too.

    Args:
        as_json: One JSON object a line, else text; by default what ``DB_LOG_JSON`` says.
        level: The least severe level written.
        loggers: Logger names to configure; add your app's own.
        stream: Where to write; ``sys.stderr`` by default.

    Returns:
        The handler, shared by every logger in *loggers*.

    Raises:
        SettingsError: *as_json* is None and ``DB_LOG_JSON`` is not a boolean
            (``true``/``false``, ``1``/``0``); the message names the variable.
    """
    if as_json is None:
        as_json = ObservabilitySettings.from_env().log_json
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    setattr(handler, _INSTALLED, True)
    for name in loggers:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _INSTALLED, False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return handler
