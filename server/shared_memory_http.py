"""The system shared-memory REST endpoints (Triton's): convert, and delegate to the region registry.

``GET v2/systemsharedmemory[/region/{name}]/status`` answers a list of ``{"name", "key", "offset",
"byte_size"}``; ``POST v2/systemsharedmemory/region/{name}/register`` takes ``{"key", "offset",
"byte_size"}``; ``POST v2/systemsharedmemory[/region/{name}]/unregister`` forgets one region or all.
Errors are mapped by server/http_errors.py's middleware, as for every endpoint. The CUDA shared-memory
endpoints stay 501 (server/http_service.py).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from ops.errors import InvalidInput
from server.shared_memory import SharedMemoryRegistry

_REGISTER_FIELDS = ("key", "offset", "byte_size")


class SharedMemoryEndpoints:
    """The five routes over one registry (the server's, shared with gRPC). Loop-bound.

    ``json_body``: reads a request's JSON object body (decoded, held to the body limit), or {} when empty.
    """

    def __init__(self, regions: SharedMemoryRegistry,
                 json_body: Callable[[web.Request], Awaitable[dict[str, Any]]]) -> None:
        self.regions = regions
        self._json_body = json_body

    def routes(self, expect_handler: Any) -> list[web.RouteDef]:
        base, region = "/v2/systemsharedmemory", "/v2/systemsharedmemory/region/{region:[^/]+}"
        return [
            web.get(base + "/status", self.status),
            web.get(region + "/status", self.status),
            web.post(region + "/register", self.register, expect_handler=expect_handler),
            web.post(base + "/unregister", self.unregister, expect_handler=expect_handler),
            web.post(region + "/unregister", self.unregister, expect_handler=expect_handler),
        ]

    async def status(self, request: web.Request) -> web.Response:
        regions = self.regions.status(request.match_info.get("region", ""))
        return web.json_response([{"name": s.name, "key": s.key, "offset": s.offset, "byte_size": s.byte_size}
                                  for s in regions])

    async def register(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        unknown = sorted(set(body) - set(_REGISTER_FIELDS))
        if unknown:
            raise InvalidInput(f"the register request has unknown field(s) {', '.join(unknown)}; it takes "
                               f"{', '.join(_REGISTER_FIELDS)}")
        key = body.get("key")
        if not isinstance(key, str):
            raise InvalidInput(f"the register request needs 'key', the shared-memory object's name as a string, "
                               f"got {json.dumps(key)[:60]}")
        self.regions.register(request.match_info["region"], key, _size(body, "offset", 0), _size(body, "byte_size"))
        return web.Response(status=200)

    async def unregister(self, request: web.Request) -> web.Response:
        self.regions.unregister(request.match_info.get("region", ""))
        return web.Response(status=200)


def _size(body: dict[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"the register request's '{name}' must be an integer >= 0, got {json.dumps(value)[:60]}")
    return value
