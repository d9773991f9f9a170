"""What the REST transports share: credentials stay with their origin, answers are bounded.

* :func:`fetch` sends one request with aiohttp (the HTTP adapter, Azure 4.0). It follows no
  redirect but a same-origin 307 or 308, which keep the method and body; any other is a
  :class:`~smoothapi.errors.RedirectError` (:func:`redirect_error`), so the credentials
  never reach another origin and a request never loses its body on the way.
* :func:`read_reply` (aiohttp) and :func:`read_body` (urllib3, under boto3 and msrest) read
  at most the adapter's ``max_response_bytes``, in chunks.
* :func:`read_body` runs in a worker thread: when the request's deadline passes while the
  answer is still arriving, the socket is shut so the read ends and the thread is free.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import yarl

from ..errors import APITimeoutError, RedirectError
from .remote import current_request

if TYPE_CHECKING:
    import aiohttp

    from .remote import RemoteAdapter

__all__ = ["FOLLOWED", "MAX_REDIRECTS", "fetch", "read_body", "read_reply", "redirect_error"]

#: Redirects that keep the method and body: followed within the same origin only.
FOLLOWED = (307, 308)
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


def redirect_error(
    status: int, base: str | yarl.URL, location: str | None, provider: str,
    followed: tuple[int, ...] = FOLLOWED,
) -> RedirectError | None:
    """The error for a redirect from ``base`` to ``location``, or ``None`` if it may be
    followed: same origin (scheme, host, port) and a status in ``followed``. The message
    names where it pointed (scheme, host and port: never the path or query)."""
    base = yarl.URL(base)
    if not location:
        return RedirectError(f"HTTP {status} redirect without a Location", provider=provider,
                             status=status)
    target = base.join(yarl.URL(location))
    where = f"{target.scheme}://{target.host}:{target.port}"[:200]
    if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
        reason = "credentials are never sent to another origin; use that URL if you trust it"
    elif status not in followed:
        reason = (f"only {' and '.join(map(str, followed))} keep the request's method and body"
                  if followed else "this transport follows no redirect")
    else:
        return None
    return RedirectError(f"HTTP {status} redirect to {where} not followed: {reason}",
                         provider=provider, status=status)


async def fetch(
    adapter: RemoteAdapter, session: aiohttp.ClientSession, method: str, url: str,
    body: Callable[[], Mapping[str, Any]], **options: Any,
) -> tuple[int, Mapping[str, str], bytes]:
    """One request, ``body()`` made afresh for each hop: the answer's status, headers and
    body (at most ``adapter.max_response_bytes``). A same-origin 307 or 308 is followed
    to its ``Location`` as it is; any other redirect raises."""
    for _ in range(MAX_REDIRECTS + 1):
        async with session.request(
            method, url, allow_redirects=False, **options, **body()
        ) as reply:
            if 300 <= reply.status < 400:
                error = redirect_error(reply.status, reply.url, reply.headers.get("Location"),
                                       adapter.name)
                if error is not None:
                    raise error
                url = str(reply.url.join(yarl.URL(reply.headers["Location"])))
                options.pop("params", None)  # the Location is the whole next URL
                continue
            return reply.status, reply.headers, await read_reply(adapter, reply)
    raise RedirectError(f"more than {MAX_REDIRECTS} redirects", provider=adapter.name)


async def read_reply(adapter: RemoteAdapter, reply: aiohttp.ClientResponse) -> bytes:
    """An aiohttp answer's body, read no further than ``adapter.max_response_bytes``."""
    limit = adapter.max_response_bytes
    if reply.content_length is not None and reply.content_length > limit:
        raise adapter.too_large()
    body = bytearray()
    async for chunk in reply.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise adapter.too_large()
    return bytes(body)


def read_body(adapter: RemoteAdapter, raw: Any, decode_content: bool | None = None) -> bytes:
    """A urllib3 answer's body (``preload_content=False``), read in a worker thread no
    further than ``adapter.max_response_bytes``; once the request's deadline passes, its
    socket is shut (the read ends at once) and ``APITimeoutError`` is raised."""
    request = current_request()
    declared = str(raw.headers.get("Content-Length", ""))
    try:
        if declared.isdigit() and int(declared) > adapter.max_response_bytes:
            raise adapter.too_large()
        if request is not None:
            request.on_expiry(lambda: _shut(raw))
        body = bytearray()
        for chunk in raw.stream(_CHUNK, decode_content=decode_content):
            body += chunk
            if len(body) > adapter.max_response_bytes:
                raise adapter.too_large()
    except Exception:
        raw.close()  # cut off mid-answer: the connection is not reused
        if request is not None and request.expired:
            raise _late(adapter) from None
        raise
    finally:
        if request is not None:
            request.on_expiry(None)
    if request is not None and request.expired:  # a shut socket can read as a short body
        raw.close()
        raise _late(adapter)
    return bytes(body)


def _late(adapter: RemoteAdapter) -> APITimeoutError:
    return APITimeoutError(f"no answer within {adapter.timeout:g} s", provider=adapter.name)


def _shut(raw: Any) -> None:
    """End a blocked read of a urllib3 answer from another thread: both ways, so the server
    sees the connection end too (a connection already back in its pool is left alone)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
