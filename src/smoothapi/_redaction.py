"""Keeping configured secrets out of every message, repr, traceback and log record.

Adapters :func:`register_secret` each credential they are given (API keys, PATs,
AWS secret keys and session tokens, query-string keys). From then on:

* :func:`redact` replaces each of them in a string with ``<redacted>``; every
  :class:`~smoothapi.errors.ProviderError` message goes through it;
* :func:`describe_cause` is what a ``ProviderError`` keeps of an SDK exception: its type
  and redacted message. The exception itself is never kept (nor chained): its attributes
  (a parsed error body, a signed request, gRPC trailing metadata) may hold an echoed
  key anywhere, and reach logs through ``repr`` or pickling;
* :func:`install_log_redaction` makes every log record of the SDK loggers the
  adapters drive (botocore, msrest, urllib3, google, grpc, aiohttp ...) and of
  smoothapi itself redacted when it is created, child loggers included.
  :class:`RedactingFilter` does the same as a filter for a handler of your own.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Any

__all__ = [
    "SDK_LOGGERS",
    "RedactingFilter",
    "describe_cause",
    "install_log_redaction",
    "redact",
    "register_secret",
]

REDACTED = "<redacted>"
#: Loggers whose records (and their children's) are redacted once an adapter is built.
SDK_LOGGERS = (
    "smoothapi",
    "botocore",
    "boto3",
    "urllib3",
    "requests",
    "msrest",
    "azure",
    "google",
    "grpc",
    "aiohttp",
    "clarifai_grpc",
    "asyncio",
    "concurrent.futures",
)
_MIN_LENGTH = 6  # shorter values would redact ordinary words

_secrets: list[str] = []
_lock = threading.Lock()


def register_secret(*values: str | None) -> None:
    """Treat each value (and its URL-quoted forms) as a secret from now on."""
    with _lock:
        for value in values:
            if not value or len(value) < _MIN_LENGTH:
                continue
            for form in (value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)):
                if form not in _secrets:
                    _secrets.append(form)
        _secrets.sort(key=len, reverse=True)  # a secret containing another goes first


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``<redacted>``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _contains_secret(text: str) -> bool:
    return any(secret in text for secret in _secrets)


def describe_cause(exc: BaseException) -> tuple[str, str]:
    """``(type, message)`` to keep of an SDK exception instead of the exception: its
    qualified type name, and its message on one line, every registered secret redacted."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    try:
        message = " ".join(str(exc).split())
    except Exception:  # noqa: BLE001 (a broken __str__ must not hide the real error)
        message = ""
    return name, redact(message)[:500]  # redacted whole, then cut: no half secret is left


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every registered secret from a record's text."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    if not _secrets:
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 (a malformed record is logging's problem, not ours)
        return
    if _contains_secret(message):
        record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        if _contains_secret(text):
            record.exc_text = redact(text)
    if record.stack_info and _contains_secret(record.stack_info):
        record.stack_info = redact(record.stack_info)


_installed = False


def _driven(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in SDK_LOGGERS)


def install_log_redaction() -> None:
    """Redact secrets from every record of :data:`SDK_LOGGERS` and their children.

    Logger filters do not apply to records of child loggers (``botocore.parsers``
    under ``botocore``), so the redaction runs where records are made: the log record
    factory is wrapped once (the previous factory still makes the record).
    """
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _driven(record.name):
                _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
