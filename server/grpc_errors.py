"""The one mapping from fleetserve's error codes to gRPC status, applied in one place.

``wrap_unary`` / ``wrap_stream`` wrap every method handler of the service when
the server is built (server/grpc_server.py), so no RPC can forget it. Unknown
exceptions become INTERNAL with a generic message and a logged traceback.
A status message travels in a trailer, which clients refuse beyond a few KiB (grpc's
default hard limit is 16 KiB, percent-encoded): one that quotes a caller's very
long string (an unknown model's name) is cut to fit (``status_text``), so the
caller still gets its code and the start of the message.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from ops.errors import Code, ServingError

log = logging.getLogger(__name__)

GRPC_STATUS: dict[Code, grpc.StatusCode] = {Code(s.value[0]): s for s in grpc.StatusCode}
STATUS_TEXT_BYTES = 4096  # of a status message, as grpc-message carries it (percent-encoded)


def _encoded_size(char: str) -> int:
    """Bytes ``char`` takes in grpc-message: printable ASCII but '%' as is, any other byte as %XX."""
    code = ord(char)
    if 0x20 <= code <= 0x7E:
        return 3 if char == "%" else 1
    return 3 * len(char.encode())


def status_text(message: str, limit: int = STATUS_TEXT_BYTES) -> str:
    """``message`` as a status may carry it: unchanged when it fits in ``limit`` encoded bytes, else its
    start and a marker giving its full length in characters."""
    if len(message) * 12 <= limit or sum(map(_encoded_size, message)) <= limit:  # 12: the most one character takes
        return message
    marker = f"...[cut: {len(message)} characters]"
    room, end = limit - len(marker), 0
    for end, char in enumerate(message):
        room -= _encoded_size(char)
        if room < 0:
            break
    return message[:end] + marker


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
            await context.abort(GRPC_STATUS[exc.code], status_text(exc.message))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, status_text(message))

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
            await context.abort(code, status_text(message))

    return handler
