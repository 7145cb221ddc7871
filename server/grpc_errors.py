"""The one mapping from fleetserve's error codes to gRPC status, applied in one place.

``wrap_unary`` / ``wrap_stream`` wrap every method handler of the service when
the server is built (server/grpc_server.py), so no RPC can forget it. Unknown
exceptions become INTERNAL with a generic message and a logged traceback.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from ops.errors import Code, ServingError

log = logging.getLogger(__name__)

GRPC_STATUS: dict[Code, grpc.StatusCode] = {Code(s.value[0]): s for s in grpc.StatusCode}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """gRPC status and message for any exception raised while serving."""
    if isinstance(exc, ServingError):
        return GRPC_STATUS[exc.code], exc.message
    log.error("internal error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal server error; the server log has the details"


def wrap_unary(fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except ServingError as exc:
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    return handler


def wrap_stream(fn: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(request_iterator, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    return handler
