"""The Open Inference Protocol REST endpoints and Triton's REST extensions: decode, delegate, encode.

Every endpoint only converts and calls the ``DataPlane`` the gRPC service uses;
errors are mapped by server/http_errors.py's middleware, never here (the one
exception: a 413 answered to ``Expect: 100-continue``, before any middleware runs). Health
answers 200 ``{"ready": true}`` or 503 ``{"ready": false}`` so probes can use
the status alone (tritonclient.http reads the status too).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import TYPE_CHECKING, Any

from aiohttp import HttpVersion11, web

from ops.errors import Code, InvalidInput, Unsupported
from ops.log_settings import update_log_settings
from ops.trace_settings import TraceSettings
from server.dataplane import EXTENSIONS, SERVER_NAME, TENANT_HEADER, DataPlane
from server.http_codec import HEADER_LENGTH, decode_infer_request, encode_infer_response, parse_json
from server.http_errors import InflatedTooLarge, body_stalled, body_too_large, unsupported_encoding
from server.http_messages import index_ready, unload_dependents, load_parameters, message_json, stats_json
from server.shared_memory import SharedMemoryRegistry
from server.shared_memory_http import SharedMemoryEndpoints

if TYPE_CHECKING:
    from ops.tracing import RequestTrace, RequestTracer

_JSON = "application/json"
# Bodies declared smaller than this are read in one ``request.read()``; larger or chunked ones are read
# chunk by chunk, each read bounded by the idle timeout, so a client that stalls mid-body cannot pin them.
STREAMED_BODY_BYTES = 1 << 20
# Content codings of a request body this server decodes (Triton's: gzip and deflate); x-gzip is gzip (RFC 9110).
_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
# A traced request's outcome when the HTTP layer refuses its body (not counted in the metrics): the code gRPC
# gives a message over its limit, and the nearest ones for a body that stalled or is in an unknown coding.
_REFUSED = {408: Code.DEADLINE_EXCEEDED, 413: Code.RESOURCE_EXHAUSTED, 415: Code.INVALID_ARGUMENT}


def content_coding(request: web.BaseRequest) -> str | None:
    """The one content coding of the request body ("gzip" or "deflate"), None for none; 415 for any other,
    or for more than one (every ``Content-Encoding`` header, each a comma-separated list; identity is none)."""
    values = request.headers.getall("Content-Encoding", ())
    codings = [c.strip(" \t").lower() for value in values for c in value.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _CODINGS:
        return _CODINGS[codings[0]]
    raise unsupported_encoding(", ".join(values))


def inflate(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from ``coding``, held to ``limit`` bytes (0: none) as it inflates (InflatedTooLarge).

    InvalidInput for bytes that are not that coding, or that end before its end (a truncated body is never
    read as a shorter one). gzip may hold several members, as gzip.decompress reads them; deflate is zlib's
    format, or raw deflate when the bytes do not start with a zlib header (as aiohttp and browsers read it)."""
    if not data:
        return b""
    out: list[bytes] = []
    size = 0
    rest = data
    while rest:  # one gzip member, or the one deflate stream, per pass
        if coding == "gzip":
            wbits = 16 + zlib.MAX_WBITS
        else:
            zlib_header = len(rest) >= 2 and rest[0] & 0x0F == 8 and (rest[0] << 8 | rest[1]) % 31 == 0
            wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
        decoder = zlib.decompressobj(wbits)
        chunk = rest
        try:
            while chunk:
                piece = decoder.decompress(chunk, limit + 1 - size if limit else 0)
                size += len(piece)
                if limit and size > limit:
                    raise InflatedTooLarge(max_size=limit, actual_size=size)
                out.append(piece)
                chunk = decoder.unconsumed_tail
        except zlib.error as exc:
            raise InvalidInput(f"the request body is not valid {coding} data (Content-Encoding: {coding}): "
                               f"{exc}; was it compressed as the header says?") from None
        if not decoder.eof:
            raise InvalidInput(f"the request body ends before the end of its {coding} data (Content-Encoding: "
                               f"{coding}): it was cut short; send the whole compressed body")
        rest = decoder.unused_data
        if rest and coding != "gzip":
            raise InvalidInput(f"{len(rest)} bytes follow the end of the request body's deflate data "
                               "(Content-Encoding: deflate)")
    return b"".join(out)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


def _repository(request: web.Request) -> str:
    """The repository a ``/v2/repository/{repository}/…`` path names ("" for the plain paths)."""
    return request.match_info.get("repository", "")


async def _expect_body(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: a body declared over the limit gets its 413 instead of the 100 that
    would invite the client to send it (aiohttp's default handler always answers 100)."""
    length = request.content_length
    if length is not None and length > request.client_max_size:
        return body_too_large(request)
    if request.version != HttpVersion11:  # as aiohttp's own handler: only HTTP/1.1 has an interim response
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler: the response proper has not begun
        return None
    raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect')}")


class HttpService:
    """The REST endpoints over one ``DataPlane``. Loop-bound; ``routes()`` lists them for the app."""

    def __init__(self, dataplane: DataPlane, *, max_body_bytes: int, body_idle_timeout_s: float,
                 tracer: "RequestTracer | None" = None, regions: SharedMemoryRegistry | None = None,
                 trace_settings: TraceSettings | None = None) -> None:
        self.dp = dataplane
        self.max_body_bytes = max_body_bytes
        self.body_idle_timeout_s = body_idle_timeout_s
        self._tracer = tracer
        self._trace_settings = trace_settings or (tracer.settings if tracer else TraceSettings(exporting=False))
        self.regions = regions if regions is not None else SharedMemoryRegistry()  # the server's, shared with gRPC
        self._shared_memory = SharedMemoryEndpoints(self.regions, self._json_body)

    def routes(self) -> list[web.RouteDef]:
        # Any name without a slash, as Triton's routes take it: aiohttp's default pattern also refuses '{' and '}',
        # which a model folder's name may hold (a model gRPC serves would be "no such endpoint" here).
        m = "/v2/models/{model:[^/]+}"
        v = "/v2/models/{model:[^/]+}/versions/{version:[^/]+}"
        r = "/v2/repository/{repository:[^/]+}"
        return [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/stats", self.statistics),  # before {model}, which would match "stats"
            web.get(m, self.model_metadata),
            web.get(v, self.model_metadata),
            web.get(m + "/ready", self.model_ready),
            web.get(v + "/ready", self.model_ready),
            web.get(m + "/config", self.model_config),
            web.get(v + "/config", self.model_config),
            web.get(m + "/stats", self.statistics),
            web.get(v + "/stats", self.statistics),
            web.post(m + "/infer", self.infer, expect_handler=_expect_body),
            web.post(v + "/infer", self.infer, expect_handler=_expect_body),
            web.post("/v2/repository/index", self.repository_index, expect_handler=_expect_body),
            web.get("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{model:[^/]+}/load", self.load, expect_handler=_expect_body),
            web.post("/v2/repository/models/{model:[^/]+}/unload", self.unload, expect_handler=_expect_body),
            # Triton's paths naming a repository: refused (501), as gRPC's repository_name is
            web.post(r + "/index", self.repository_index, expect_handler=_expect_body),
            web.post(r + "/models/{model:[^/]+}/load", self.load, expect_handler=_expect_body),
            web.post(r + "/models/{model:[^/]+}/unload", self.unload, expect_handler=_expect_body),
            *self._shared_memory.routes(_expect_body),
            web.route("*", "/v2/cudasharedmemory{tail:.*}", self.cuda_shared_memory),
            web.get("/v2/trace/setting", self.trace_settings),
            web.post("/v2/trace/setting", self.trace_settings, expect_handler=_expect_body),
            web.get(m + "/trace/setting", self.trace_settings),
            web.post(m + "/trace/setting", self.trace_settings, expect_handler=_expect_body),
            web.get("/v2/logging", self.log_settings),
            web.post("/v2/logging", self.log_settings, expect_handler=_expect_body),
        ]

    async def _body(self, request: web.Request) -> bytes:
        """The request body, decoded from its ``Content-Encoding``; refused with 415 before reading when the
        coding is not one this server decodes, and with 413 when its declared length is over the limit.

        A large or chunked body is read with an idle timeout (``_streamed_body``); aiohttp has none. The
        listener leaves bodies as sent (``auto_decompress=False``, server/http_server.py): a compressed one
        is decoded here, in a worker thread, held to the limit as it inflates (``inflate``)."""
        coding = content_coding(request)
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body_bytes, actual_size=length)
        if length is not None and length < STREAMED_BODY_BYTES:
            body = await request.read()
        else:
            body = await self._streamed_body(request)
        if coding is None:
            return body
        return await asyncio.get_running_loop().run_in_executor(
            None, inflate, body, coding, request.client_max_size)

    async def _streamed_body(self, request: web.Request) -> bytes:
        """The body read chunk by chunk: 408 once no byte arrives for ``body_idle_timeout_s`` (its bytes are
        dropped, its connection closed), 413 once it grows past ``client_max_size`` (as ``request.read()``)."""
        limit, idle, content = request.client_max_size, self.body_idle_timeout_s, request.content
        body = bytearray()
        while True:
            try:
                chunk = await asyncio.wait_for(content.readany(), idle)
            except asyncio.TimeoutError:
                raise body_stalled(request, idle, len(body)) from None
            if not chunk:
                return bytes(body)
            body.extend(chunk)
            if limit and len(body) > limit:  # 0: no limit, as aiohttp's
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        if not body.strip():
            return {}
        value = parse_json(body, "the request body")
        if not isinstance(value, dict):
            raise InvalidInput("the request body must be a JSON object")
        return value

    # ---- health and metadata ----------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        live = self.dp.live()
        return _json({"live": live}, 200 if live else 503)

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.dp.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self.dp.model_ready(*_model(request))
        return _json({"name": request.match_info["model"], "ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": SERVER_NAME, "version": self.dp.version, "extensions": list(EXTENSIONS)})

    async def model_metadata(self, request: web.Request) -> web.Response:
        meta = self.dp.model_metadata(*_model(request))
        return _json({
            "name": meta.name,
            "versions": meta.versions,
            "platform": meta.platform,
            "inputs": [{"name": n, "datatype": d, "shape": list(s)} for n, d, s in meta.inputs],
            "outputs": [{"name": n, "datatype": d, "shape": list(s)} for n, d, s in meta.outputs],
        })

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(message_json(self.dp.model_config(*_model(request)).to_proto()))

    async def statistics(self, request: web.Request) -> web.Response:
        name = request.match_info.get("model", "")
        rows = self.dp.statistics(name, request.match_info.get("version", ""))
        return _json({"model_stats": [stats_json(n, v, s) for n, v, s in rows]})

    # ---- repository control -------------------------------------------------------------------
    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._json_body(request) if request.method == "POST" else {}
        entries = self.dp.repository_index(index_ready(body), _repository(request))
        return _json([{"name": e.name, "version": e.version, "state": e.state.value, "reason": e.reason}
                      for e in entries])

    async def load(self, request: web.Request) -> web.Response:
        parameters = load_parameters(await self._json_body(request))
        await self.dp.load_model(request.match_info["model"], parameters, _repository(request))
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        dependents = unload_dependents(await self._json_body(request))
        await self.dp.unload_model(request.match_info["model"], _repository(request), dependents)
        return web.Response(status=200)

    async def cuda_shared_memory(self, request: web.Request) -> web.Response:
        raise Unsupported(f"{request.path}: CUDA shared memory is not supported (this server keeps no tensors on a "
                          "GPU); use system shared memory, or send tensors in the request")

    async def trace_settings(self, request: web.Request) -> web.Response:
        """Triton's trace extension: POST applies the JSON object's settings to the server's, or to the model's
        the path names; both answer every setting as it now applies (the same the TraceSetting RPC has)."""
        changes = await self._json_body(request) if request.method == "POST" else {}
        return _json(self._trace_settings.update(changes, request.match_info.get("model", "")).as_json())

    async def log_settings(self, request: web.Request) -> web.Response:
        """Triton's logging extension: POST applies the JSON object's settings; both answer every setting."""
        changes = await self._json_body(request) if request.method == "POST" else {}
        return _json(update_log_settings(changes).as_dict())

    # ---- inference ----------------------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        if self._tracer is None:
            return await self._infer(request, None)
        headers = request.headers
        with self._tracer.begin(headers.get("traceparent"), headers.get("tracestate")) as trace:
            trace.model = request.match_info["model"]
            try:
                return await self._infer(request, trace)
            except web.HTTPException as exc:  # the HTTP layer refused the body: the caller's doing, not INTERNAL
                trace.outcome = _REFUSED.get(exc.status, Code.INVALID_ARGUMENT if exc.status < 500 else Code.INTERNAL)
                raise

    async def _infer(self, request: web.Request, trace: "RequestTrace | None") -> web.Response:
        model, version = _model(request)
        try:
            body = await self._body(request)  # a compressed body that does not inflate fails here, counted too
            lengths = request.headers.getall(HEADER_LENGTH, ())  # every one given: repeats must agree
            infer, choice = decode_infer_request(model, version, body, ", ".join(lengths) if lengths else None,
                                                 self.regions)
        except web.HTTPException:
            raise  # the HTTP layer's own refusals (413, 415, 408), as grpc's own (an over-limit message): not counted
        except Exception as exc:  # counted whatever it is: the caller gets an error status for it
            refused = self.dp.refuse_undecoded(model, version, "", exc)  # an unknown or unready model first
            if refused is exc:
                raise
            raise refused from None
        infer.trace = trace
        if trace is not None:
            trace.request_id = infer.id
        if self.dp.tenant_aware:
            infer.tenant = request.headers.get(TENANT_HEADER, "")
        response = await self.dp.infer(infer)
        if trace is not None:
            trace.done_ns = time.perf_counter_ns()
            trace.version, trace.request_id = response.model_version, response.id
        payload, json_length = encode_infer_response(response, choice)
        if json_length is None:
            return web.Response(body=payload, content_type=_JSON)
        return web.Response(body=payload, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(json_length)})
