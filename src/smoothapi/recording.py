"""Record a vision API's responses once, replay them offline in tests.

    recording = Recording("tests/fixtures/aws.jsonl", mode="record")   # real calls, saved
    adapter = create_adapter("aws", recording=recording)
    ...
    recording = Recording("tests/fixtures/aws.jsonl")                  # mode="replay"
    adapter = create_adapter("aws", recording=recording)               # no network, no keys

A request is identified by the adapter's name, its request parameters and the
SHA-256 of every image it carries; the same seed draws the same noise, so a
replayed certification sends the same requests and finds them. The file is JSON
Lines, one request per line, holding only that key and the parsed response bodies
(or per-image errors): never request headers, URLs, credentials or image bytes, and
any field whose name looks secret is redacted before writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import errors
from .errors import InvalidInputError, ProviderError, ReplayMissError

__all__ = ["MODES", "Recording", "scrub"]

MODES = ("replay", "record", "auto")
REDACTED = "<redacted>"
_SECRET = re.compile(
    r"(api[-_]?key|token|secret|password|authori[sz]ation|signature|credential)", re.IGNORECASE
)


def scrub(value: Any) -> Any:
    """A copy of a JSON value with every field whose name looks secret redacted."""
    if isinstance(value, Mapping):
        return {k: REDACTED if _SECRET.search(str(k)) else scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def request_key(provider: str, params: Mapping[str, Any], images: Sequence[bytes]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([provider, params], sort_keys=True, default=str).encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()


def _error_to_json(error: ProviderError) -> dict[str, Any]:
    return {
        "error": {
            "type": type(error).__name__,
            "message": str(error),
            "status": error.status,
            "code": error.code,
            "retry_after": error.retry_after,
            "possibly_billed": error.possibly_billed,
        }
    }


def _error_from_json(data: Mapping[str, Any], provider: str) -> ProviderError:
    cls = getattr(errors, data.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, ProviderError)):
        cls = ProviderError
    message = data.get("message", "")
    prefix = f"{provider}: "
    error = cls(
        message[len(prefix) :] if message.startswith(prefix) else message,
        provider=provider,
        status=data.get("status"),
        code=data.get("code"),
        retry_after=data.get("retry_after"),
    )
    if "possibly_billed" in data:
        error.possibly_billed = bool(data["possibly_billed"])
    return error


class Recording:
    """A JSON Lines file of provider responses.

    ``mode``: ``"replay"`` answers only from the file (a miss raises
    :class:`~smoothapi.errors.ReplayMissError`); ``"record"`` sends every request and
    appends its response; ``"auto"`` replays what it has and records the rest.
    """

    def __init__(
        self, path: str | os.PathLike, mode: str = "replay", *, how_to_record: str | None = None
    ) -> None:
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
        self.path, self.mode = Path(path), mode
        #: How a miss says to record what is missing (the command line says ``--record FILE``).
        self.how_to_record = how_to_record or "mode='record' or 'auto'"
        self._entries: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        entry = json.loads(line)
                        self._entries[entry["key"]] = entry["responses"]
        elif mode == "replay":
            how = how_to_record or "mode='record'"
            raise InvalidInputError(f"no recording at {self.path}; record one with {how}")

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str, provider: str) -> list[Any] | None:
        """The recorded responses (errors rebuilt as exceptions), or ``None`` if not recorded."""
        if self.mode == "record" or key not in self._entries:
            if self.mode == "replay":
                raise ReplayMissError(
                    f"{provider}: request {key[:12]}… is not in {self.path}; "
                    f"record it with {self.how_to_record}"
                )
            return None
        return [
            _error_from_json(r["error"], provider)
            if isinstance(r, Mapping) and "error" in r and len(r) == 1
            else r
            for r in self._entries[key]
        ]

    def store(self, key: str, provider: str, responses: Sequence[Any]) -> None:
        """Append one request's responses (dicts, or ProviderErrors for per-image failures)."""
        body = [_error_to_json(r) if isinstance(r, ProviderError) else scrub(r) for r in responses]
        line = json.dumps({"key": key, "provider": provider, "responses": body}, sort_keys=True)
        with self._lock:
            self._entries[key] = body
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
