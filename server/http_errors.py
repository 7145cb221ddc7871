"""The one mapping from fleetserve's error codes to HTTP status, applied in one place.

``HTTP_STATUS`` is total over ``ops.errors.Code`` and follows google.rpc.Code's
HTTP mapping (the same codes the gRPC transport sends). ``error_middleware``
wraps every route of the REST application when it is built
(server/http_server.py), so no endpoint can forget it. Every error body is
``{"error": "<message>"}``. Protocol-level errors of the HTTP layer itself (no
such endpoint 404, wrong method 405 (with ``Allow``), body over the limit 413, body that stopped
arriving 408, a content coding this server does not decode 415) keep their status and get the
same body. Unknown exceptions become 500 with a generic message and a logged traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable

from aiohttp import web

from ops.errors import Code, ServingError

log = logging.getLogger(__name__)

HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,  # the client closed the request; never seen by that client, but logged and counted
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
INTERNAL_MESSAGE = "internal server error; the server log has the details"


def error_response(status: int, message: str) -> web.Response:
    # Exactly "application/json", no charset parameter (RFC 8259 defines none): KServe's REST
    # client reads the message of an error only when the Content-Type is that string (test_kserve_client.py).
    return web.Response(status=status, body=json.dumps({"error": message}).encode(), content_type="application/json")


class InflatedTooLarge(web.HTTPRequestEntityTooLarge):
    """A compressed body whose own bytes were within ``client_max_size`` but that inflates past it."""


def body_too_large(request: web.BaseRequest, *, inflated: bool = False) -> web.Response:
    """413 for a body over ``client_max_size``: its declared length, or what it grew to once decompressed."""
    length, encoding = request.content_length, request.headers.get("Content-Encoding")
    if inflated:  # a few compressed bytes can inflate far past the limit: it applies to what they inflate to
        body = f"the request body, decompressed (Content-Encoding: {encoding}),"
    elif length is not None and length > request.client_max_size:
        body = f"the request body of {length} bytes"
    else:
        body = "the request body"
    return error_response(413, f"{body} is over this server's limit of {request.client_max_size} bytes "
                               "(--http-max-body-bytes)")


ACCEPTED_ENCODINGS = "gzip, deflate"


def unsupported_encoding(encoding: str) -> web.HTTPUnsupportedMediaType:
    """415 for a request body in a content coding this server does not decode, naming those it does in
    ``Accept-Encoding`` (RFC 9110 15.5.16), as Triton answers."""
    return web.HTTPUnsupportedMediaType(
        text=f"Content-Encoding {encoding[:60]!r} is not supported; send the body uncompressed, or compressed "
             f"once with one of: {ACCEPTED_ENCODINGS}",
        headers={"Accept-Encoding": ACCEPTED_ENCODINGS},
    )


def body_stalled(request: web.BaseRequest, idle_timeout_s: float, received: int) -> web.HTTPRequestTimeout:
    """408 for a body that stopped arriving for ``idle_timeout_s``; the middleware answers it and closes the
    connection (what the client sent is dropped). Counts are of the bytes as sent (compressed or not)."""
    length = request.content_length
    if length is not None:
        got = f"{received} of its {length} bytes"
    else:
        got = f"{received} bytes of it"
    return web.HTTPRequestTimeout(text=f"the request body stopped arriving: nothing came for {idle_timeout_s:g} s "
                                       f"after {got} (--http-body-idle-timeout); send the whole body without pausing")


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServingError as exc:
        return error_response(HTTP_STATUS[exc.code], exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        return body_too_large(request, inflated=isinstance(exc, InflatedTooLarge))
    except web.HTTPRequestTimeout as exc:
        response = error_response(408, exc.text or exc.reason)
        response.force_close()  # the rest of the body was never read: this connection cannot carry another request
        return response
    except web.HTTPNotFound:
        return error_response(404, f"no such endpoint: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(405, f"{request.method} is not allowed on {request.path}; allowed: {allowed}")
        response.headers["Allow"] = allowed  # RFC 9110 15.5.6: a 405 must name the methods the resource allows
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.text or exc.reason)
        if "Accept-Encoding" in exc.headers:  # 415: the content codings this server decodes
            response.headers["Accept-Encoding"] = exc.headers["Accept-Encoding"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("internal error while serving %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, INTERNAL_MESSAGE)
