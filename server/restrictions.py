"""Restricted APIs (Triton's ``--grpc-restricted-protocol`` and ``--http-restricted-api``): groups of endpoints
that answer only requests carrying a header with a given value, e.g. the model-repository and logging APIs
kept for operators while inference stays open.

A restriction is ``CATEGORIES:KEY=VALUE``. Over gRPC the header (metadata) is ``triton-grpc-protocol-KEY``,
over REST it is ``KEY``, as Triton names them. A request without it, or with another value, is refused
before it is read: gRPC PERMISSION_DENIED, REST 403, with Triton's message (``This protocol is restricted,
expecting header '...'``). Triton answers gRPC UNAVAILABLE, which clients' retry policies retry; a missing
key is not worth retrying. Values are compared in constant time. Nothing is installed without a restriction:
the interceptor and the middleware cost every request a little, so a server without restrictions has neither.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence

import grpc
from aiohttp import web

from ops.access_metrics import RefusedRequests
from ops.errors import Restricted

CATEGORIES = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
              "trace", "logging")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

_SERVICE = "/inference.GRPCInferenceService/"
GRPC_METHODS: dict[str, str] = {
    **{_SERVICE + m: "health" for m in ("ServerLive", "ServerReady", "ModelReady")},
    "/grpc.health.v1.Health/Check": "health",
    "/grpc.health.v1.Health/Watch": "health",
    **{_SERVICE + m: "metadata" for m in ("ServerMetadata", "ModelMetadata")},
    **{_SERVICE + m: "inference" for m in ("ModelInfer", "ModelStreamInfer")},
    **{_SERVICE + f"{kind}SharedMemory{verb}": "shared-memory"
       for kind in ("System", "Cuda") for verb in ("Status", "Register", "Unregister")},
    _SERVICE + "ModelConfig": "model-config",
    **{_SERVICE + m: "model-repository" for m in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")},
    _SERVICE + "ModelStatistics": "statistics",
    _SERVICE + "TraceSetting": "trace",
    _SERVICE + "LogSettings": "logging",
}

_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
# REST paths by category, tried in order (the first match decides): suffixes before the bare model path.
_HTTP_PATHS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), c) for p, c in (
    (r"/v2/health/.*", "health"),
    (_MODEL + r"/ready", "health"),
    (r"/v2/models/stats|" + _MODEL + r"/stats", "statistics"),
    (_MODEL + r"/config", "model-config"),
    (_MODEL + r"/infer", "inference"),
    (r"/v2/trace/setting|" + _MODEL + r"/trace/setting", "trace"),
    (r"/v2/logging", "logging"),
    (r"/v2/repository(?:/.*)?", "model-repository"),
    (r"/v2/(?:system|cuda)sharedmemory(?:/.*)?", "shared-memory"),
    (r"/v2|" + _MODEL, "metadata"),
))


@dataclass(frozen=True)
class Restriction:
    categories: tuple[str, ...]
    key: str  # as given: the REST header; gRPC's is GRPC_HEADER_PREFIX + key, lower-cased
    value: str


def parse_restriction(text: str, flag: str) -> Restriction:
    """``CATEGORIES:KEY=VALUE``; raises ValueError naming ``flag``."""
    head, colon, pair = text.partition(":")  # the value may hold ':' and '=': the first of each splits
    key, equals, value = pair.partition("=")
    categories = tuple(c.strip() for c in head.split(",")) if colon else ()
    if not colon or not equals or not key or not all(categories):
        raise ValueError(f"{flag} takes CATEGORIES:KEY=VALUE (categories: {', '.join(CATEGORIES)}), got {text!r}")
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"{flag}: unknown restricted protocol '{category}' (known: {', '.join(CATEGORIES)})")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", key):
        raise ValueError(f"{flag}: the header key must be letters, digits, '-' and '_', got {key!r}")
    return Restriction(categories, key, value)


def restrictions_by_category(groups: Iterable[Restriction], flag: str) -> dict[str, Restriction]:
    """One restriction per category; raises ValueError when a category is in two groups (as Triton refuses)."""
    by_category: dict[str, Restriction] = {}
    for group in groups:
        for category in group.categories:
            if category in by_category:
                raise ValueError(f"{flag}: protocol '{category}' can not be specified in multiple config groups")
            by_category[category] = group
    return by_category


def _allowed(given: str | bytes | None, value: str) -> bool:
    if given is None:
        return False
    given_bytes = given.encode() if isinstance(given, str) else given
    return hmac.compare_digest(given_bytes, value.encode())


class GrpcRestrictions(grpc.aio.ServerInterceptor):
    """Refuses calls to restricted methods that lack their header (installed only with a restriction), counted
    in ``refused`` (ops/access_metrics.py)."""

    def __init__(self, by_category: dict[str, Restriction], refused: "RefusedRequests | None" = None) -> None:
        self._by_method = {method: (category, by_category[category]) for method, category in GRPC_METHODS.items()
                           if category in by_category}
        self._refused = refused

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        found = self._by_method.get(details.method)
        if found is None or handler is None:
            return handler
        category, restriction = found
        header = GRPC_HEADER_PREFIX + restriction.key.lower()
        given = next((v for k, v in (details.invocation_metadata or ()) if k == header), None)
        if _allowed(given, restriction.value):
            return handler
        if self._refused is not None:
            self._refused.refuse("grpc", category)
        return _refusal(handler, f"This protocol is restricted, expecting header '{header}'")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call PERMISSION_DENIED without reading it."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        yield  # pragma: no cover (never reached: an async generator, as a streaming handler must be)

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    build = kinds[(handler.request_streaming, handler.response_streaming)]
    return build(refuse_stream if handler.response_streaming else refuse,
                 request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def http_category(path: str) -> str | None:
    """The category of a REST path (None: not one of the API's, e.g. a 404)."""
    for pattern, category in _HTTP_PATHS:
        if pattern.fullmatch(path):
            return category
    return None


def http_middleware(by_category: dict[str, Restriction],
                    refused: "RefusedRequests | None" = None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware refusing requests to restricted APIs without their header: ``Restricted``, which the
    error middleware (outside this one) answers 403 with Triton's message."""

    @web.middleware
    async def restrict(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        category = http_category(request.path)
        restriction = by_category.get(category) if category else None
        if restriction is not None and not _allowed(request.headers.get(restriction.key), restriction.value):
            if refused is not None:
                refused.refuse("http", category or "")
            raise Restricted(f"This API is restricted, expecting header '{restriction.key}'")  # 403
        return await handler(request)

    return restrict


def grpc_peer_metadata(by_category: dict[str, Restriction]) -> Sequence[tuple[str, str]]:
    """What one replica sends another with a forwarded inference request, when inference is restricted."""
    restriction = by_category.get("inference")
    if restriction is None:
        return ()
    return ((GRPC_HEADER_PREFIX + restriction.key.lower(), restriction.value),)
