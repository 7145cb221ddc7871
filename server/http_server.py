"""HTTP listeners on the server's event loop: the REST API and the Prometheus /metrics endpoint.

``HttpListener`` runs one aiohttp application on a socket it binds itself (so
port 0 works and the real port is known at once) on the running loop, the
same loop as grpc.aio. The REST listener leaves request bodies as sent
(``auto_decompress=False``): server/http_service.py decodes them, refusing
codings it does not decode (415) and corrupt or truncated compressed data (400),
where aiohttp would pass an unknown coding through as is, read a truncated gzip
body as a shorter one, and fail a corrupt one with a 500. ``rest_app`` builds
the REST application with the one error middleware; ``metrics_app`` serves a
``CollectorRegistry`` in the text format Prometheus asks for (OpenMetrics or
0.0.4; 0.0.4 when the Accept header cannot be read), gzip-compressed when
accepted. Collecting and encoding run in a worker
thread (ops/metrics.py's collection is safe there): a scrape of many model
versions takes tens of milliseconds, which must not stall the loop that answers
requests. A request aiohttp's parser refuses (bad framing, a header line too long,
TLS sent to the plain port) gets aiohttp's 400 and is logged at DEBUG in one line
(``ClientFramingFilter``): the client's mistake, not the server's, and not worth an
ERROR with a traceback, which a port scanner could otherwise fill the log with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.registry import CollectorRegistry

from ops.gpu import write_triton_values_in_full
from server.http_errors import error_middleware
from server.http_service import HttpService
from ops.access_metrics import RefusedRequests
from server.restrictions import Restriction, http_middleware
from server.tls import HttpTlsReloader


class ClientFramingFilter(logging.Filter):
    """On aiohttp's server logger: a request its parser refused (a 4xx ``HttpProcessingError``, logged by aiohttp
    at ERROR, or at DEBUG for non-HTTP bytes) becomes one DEBUG line without the traceback, dropped unless that
    logger is enabled for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= exc.code < 500:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        reason = " ".join(str(exc.message).split())[:200]
        record.msg, record.args = "%s: %d %s", (record.getMessage(), exc.code, reason)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = record.exc_text = None
        return True


_AIOHTTP_SERVER_LOG = logging.getLogger("aiohttp.server")
_CUT_S = 0.05  # past the shutdown timeout: how long a cancelled handler gets before its connection closes


def _quiet_client_framing_errors() -> None:
    if not any(isinstance(f, ClientFramingFilter) for f in _AIOHTTP_SERVER_LOG.filters):
        _AIOHTTP_SERVER_LOG.addFilter(ClientFramingFilter())


def rest_app(service: HttpService, restricted: "dict[str, Restriction] | None" = None,
             refused: "RefusedRequests | None" = None) -> web.Application:
    """``restricted``: the APIs that need a header, by category (server/restrictions.py; none: no middleware),
    refusals counted in ``refused``."""
    middlewares = [error_middleware, http_middleware(restricted, refused)] if restricted else [error_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=service.max_body_bytes)
    app.add_routes(service.routes())
    return app


def _encoder(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """The format the ``Accept`` header asks for; the 0.0.4 text format when prometheus_client cannot read it
    (it raises on a version that is not numbers, such as ``version=x``): the scraper's mistake, never a 500."""
    try:
        return choose_encoder(accept)
    except Exception:
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


def _expose(encoder: Callable[[CollectorRegistry], bytes], registry: CollectorRegistry) -> bytes:
    return write_triton_values_in_full(encoder(registry))  # perf_analyzer's parse of Triton's GPU names


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = _encoder(request.headers.get("Accept", ""))
        body = await asyncio.get_running_loop().run_in_executor(None, _expose, encoder, registry)
        response = web.Response(body=body, headers={"Content-Type": content_type})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics)])
    return app


class HttpListener:
    """One aiohttp application on ``host:port``. ``start``/``stop`` from the loop that serves it."""

    def __init__(self, app: web.Application, host: str, port: int, *, shutdown_timeout_s: float = 30.0,
                 auto_decompress: bool = True, tls: HttpTlsReloader | None = None) -> None:
        self._app = app
        self._tls = tls  # HTTPS, its certificate files checked until ``stop`` (server/tls.py)
        self._host = host
        self._port = port
        self._shutdown_timeout_s = shutdown_timeout_s
        self._auto_decompress = auto_decompress
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the port (the OS's choice when asked for 0). Raises OSError."""
        # A handler is cancelled when its client disconnects, so a request whose caller is gone
        # leaves the batch queue before it runs (the dataplane records it as CANCELLED).
        _quiet_client_framing_errors()
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None, handler_cancellation=True,
                               shutdown_timeout=self._shutdown_timeout_s, auto_decompress=self._auto_decompress)
        await runner.setup()
        family, kind, proto, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.setblocking(False)
            await web.SockSite(runner, sock, ssl_context=self._tls.context if self._tls else None).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop accepting; requests in progress may finish within the shutdown timeout, which bounds the whole
        stop: a handler still running then is cancelled and its connection closed at once (aiohttp alone
        would wait the timeout a second time for a handler that does not end when cancelled)."""
        runner, self._runner = self._runner, None
        if self._tls is not None:
            self._tls.stop()
        if runner is None:
            return
        cleanup = asyncio.ensure_future(runner.cleanup())
        done, _ = await asyncio.wait({cleanup}, timeout=self._shutdown_timeout_s)
        if done:
            cleanup.result()
            return
        cleanup.cancel()
        await asyncio.wait({cleanup})
        if runner.server is not None:  # cancel what still runs and close its connections, without waiting
            await runner.server.shutdown(_CUT_S)
        with contextlib.suppress(asyncio.TimeoutError):  # the app's own cleanup (none waits, in our apps)
            await asyncio.wait_for(runner.cleanup(), _CUT_S)
