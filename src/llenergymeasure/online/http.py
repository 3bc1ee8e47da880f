"""HTTP for online mode: the pooled client, pre-flight GETs and the model list of a server.

``async_client`` is the httpx client on aiohttp's transport that ``OpenAIStreamClient`` streams
through; ``http_get`` is a bounded ``GET`` with one deadline (health checks, ``/v1/models``);
``served_models`` reads a server's model list. Credentials in a URL travel as an
``Authorization`` header only, and an API key echoed by a server is masked in errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx

__all__ = [
    "EndpointAuthError",
    "EndpointError",
    "async_client",
    "error_message",
    "http_get",
    "read_prefix",
    "served_models",
    "without_userinfo",
]

#: Largest answer of a pre-flight GET (``/v1/models``, health) read.
MAX_PREFLIGHT_BYTES = 8 << 20
_KEEPALIVE_S = 2.0  # below uvicorn's 5 s idle timeout, so a pooled connection is never stale
_T = TypeVar("_T")


class EndpointError(OSError):
    """A pre-flight call failed: unreachable, too slow (past its deadline), not HTTP, too large."""


class EndpointAuthError(EndpointError):
    """The server refused a pre-flight call for want of a valid API key (HTTP 401/403)."""


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """The system's default TLS context, made once (loading the CA store takes milliseconds)."""
    return ssl.create_default_context()


def without_userinfo(url: str) -> tuple[str, str | None]:
    """``url`` without ``user:pass@`` and the ``Authorization: Basic`` value it stood for.

    aiohttp refuses a URL that carries credentials beside an Authorization header (which httpx
    adds for them), so the credentials travel as the header alone.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    import base64
    from urllib.parse import unquote

    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return parts._replace(netloc=netloc).geturl(), f"Basic {token}"


def async_client(timeout_s: float, url: str) -> httpx.AsyncClient:
    """An httpx client for ``url``'s server on aiohttp's connection pool, with no cap of its own
    (the load driver caps what is in flight); TLS (verified) only for an https URL.

    aiohttp's transport (``httpx-aiohttp``) parses HTTP in C: per streamed chunk it costs about
    a third of httpx's own transport (``benchmarks/online_client.py``), and at high request
    rates that CPU is what delays the clock readings.
    """
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport

    connector = aiohttp.TCPConnector(
        limit=0,  # no pool limit: a queued request would look like a slow server
        keepalive_timeout=_KEEPALIVE_S,
        ssl=_tls_context() if urlsplit(url).scheme == "https" else True,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        # proxies from the environment would sit between the server and the clock
        trust_env=False,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),  # the caller's deadline is the limit
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(client=session, verify=False),  # TLS is the session's
        timeout=httpx.Timeout(timeout_s),
        trust_env=False,
        follow_redirects=False,
    )


async def read_prefix(pieces: AsyncIterator[bytes], limit: int) -> str:
    """Up to ``limit`` bytes of a body (the rest is never read), as text."""
    out = bytearray()
    async for piece in pieces:
        out += piece
        if len(out) >= limit:
            break
    return out[:limit].decode("utf-8", errors="replace")


def error_message(text: str) -> str:
    """The ``message``/``detail`` of an OpenAI/FastAPI error body, else its start."""
    with contextlib.suppress(ValueError, RecursionError):
        obj = json.loads(text)
        if isinstance(obj, dict):
            err = obj.get("error", obj)
            if isinstance(err, dict):
                for key in ("message", "detail"):
                    if key in err:
                        return str(err[key])[:300]
            elif isinstance(err, str):
                return err[:300]
            if "detail" in obj:
                return str(obj["detail"])[:300]
    return text.strip()[:300] or "(empty body)"


def _run_sync(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even under a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def http_get(
    url: str,
    *,
    timeout_s: float,
    api_key: str | None = None,
    max_bytes: int = MAX_PREFLIGHT_BYTES,
) -> tuple[int, bytes]:
    """``GET url`` with one deadline for the whole exchange: ``(status, body)``.

    ``EndpointError`` (an ``OSError``) when the server cannot be reached, does not answer in
    HTTP, is not done within ``timeout_s`` (however it trickles its bytes) or sends more than
    ``max_bytes``.
    """
    import httpx

    bare_url, basic_auth = without_userinfo(url)

    async def fetch() -> tuple[int, bytes]:
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        elif basic_auth is not None:
            headers["Authorization"] = basic_auth
        async with (
            async_client(timeout_s, bare_url) as pool,
            pool.stream("GET", bare_url, headers=headers) as response,
        ):
            body = bytearray()
            async for piece in response.aiter_raw():
                body += piece
                if len(body) > max_bytes:
                    raise EndpointError(f"the answer to GET {url} is larger than {max_bytes} bytes")
            return response.status_code, bytes(body)

    async def bounded() -> tuple[int, bytes]:
        return await asyncio.wait_for(fetch(), timeout=timeout_s)

    def masked(text: str) -> str:
        return text.replace(api_key, "***") if api_key else text

    try:
        return _run_sync(bounded)
    except EndpointError:
        raise
    except (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException) as exc:
        raise EndpointError(f"no complete answer to GET {url} within {timeout_s:g} s") from exc
    except Exception as exc:
        import aiohttp

        cause: BaseException = exc
        while not isinstance(cause, aiohttp.ClientError) and cause.__cause__ is not None:
            cause = cause.__cause__
        text = masked(str(cause) or type(cause).__name__)[:300]
        if isinstance(cause, (aiohttp.ClientConnectorError, httpx.ConnectError, OSError)):
            raise EndpointError(f"cannot connect: {text}") from exc
        raise EndpointError(f"not an HTTP server: {type(cause).__name__}: {text}") from exc


def _models_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    prefix = parts.path.rstrip("/")
    if not prefix.endswith("/v1"):
        prefix += "/v1"
    return f"{parts.scheme}://{parts.netloc}{prefix}/models"


def served_models(
    base_url: str, *, timeout_s: float = 10.0, api_key: str | None = None
) -> list[str] | None:
    """Model ids the server lists at ``/v1/models``; ``None`` when it gives no such list.

    Raises ``EndpointError`` (an ``OSError``) when the server cannot be reached or does not
    answer properly within ``timeout_s`` in all, ``EndpointAuthError`` when it refuses the
    (missing) API key: the caller turns that into an error naming the endpoint.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
    url = _models_url(base_url)
    status, body = http_get(url, timeout_s=timeout_s, api_key=api_key)
    if status in (401, 403):
        raise EndpointAuthError(
            f"GET {url} answered HTTP {status}: "
            + ("the API key was refused" if api_key else "the server wants an API key")
        )
    if status != 200:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [str(m["id"])[:256] for m in items if isinstance(m, dict) and "id" in m]
