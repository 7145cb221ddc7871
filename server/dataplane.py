"""The transport-neutral core: every RPC and REST endpoint converts and delegates here.

Works on fleetserve's own types (server/types.py, model_store, ops.statistics);
never imports grpc, an HTTP framework or protobuf modules. Raises only
``ServingError`` subclasses for anything a caller did wrong or that is not
available; the transports map their codes.

In fleet mode (server/fleet.py) an inference also passes, in this order: the traffic
router (a request without a version gets the version the rollout's split gives its id, or its sequence),
the tenant's rate limit (``RateLimited``, RESOURCE_EXHAUSTED), validation, and the
response cache (before the request is queued). Standalone, each is one ``is None`` check.
Outputs a request asks for as classes (Triton's classification extension, server/classification.py)
are built from its own rows as it is answered, after the cache: the cache holds tensors only.
A request whose version is swapped out while it awaits the rate limit or the cache has not
queued anywhere yet: it is resolved again, so a swap fails none of them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable

import numpy as np
from prometheus_client.registry import CollectorRegistry

from model_store.config import ModelConfig, TensorSpec
from model_store.registry import ModelRegistry
from model_store.routing import routing_key
from ops.errors import Code, InvalidInput, ModelNotReady, ServingError, code_of
from ops.logs import RequestLog
from ops.histograms import MetricsConfig
from ops.metrics import ServerMetrics
from ops.statistics import ModelStats
from server.classification import classify_outputs
from server.served import ServedVersion
from server.types import InferRequest, InferResponse, InputTensor, OutputTensor
from server.repository_control import ControlMode, RepositoryControl
from server.sequence_routing import forwarded_answer, sequence_holder
from server.validation import output_spec, scheduling, sequence_of, validate

if TYPE_CHECKING:  # fleet mode only: these import redis
    from model_store.routing import TrafficRouter
    from server.rate_limit import TenantLimiter
    from server.response_cache import ResponseCache
    from server.sequence_owners import SequenceOwners

SERVER_NAME = "fleetserve"
# A caller that cancels this close to its deadline gave up at the deadline: gRPC's client and server each time
# the deadline, the server's from when the request arrived, so a client's cancel may arrive before it.
DEADLINE_SKEW_S = 0.02
# Where a request names its tenant (fleet mode rate limits): the transport's header wins over the parameter.
TENANT_METADATA = "fleetserve-tenant"  # gRPC metadata key
TENANT_HEADER = "X-Fleetserve-Tenant"  # HTTP header
TENANT_PARAMETER = "tenant"  # request parameter, both transports
EXTENSIONS = ("model_configuration", "model_repository", "model_repository(unload_dependents)", "statistics",
              "binary_tensor_data", "logging", "trace", "classification", "system_shared_memory")


@dataclass(slots=True)
class Call:
    """One inference request between ``DataPlane.start`` and ``DataPlane.finish``."""

    request: InferRequest
    servable: ServedVersion
    start_ns: int


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[tuple[str, str, tuple[int, ...]]]  # name, datatype, shape (-1 variable)
    outputs: list[tuple[str, str, tuple[int, ...]]]


class DataPlane(RepositoryControl):
    """See the module docstring. Loop-bound."""

    def __init__(
        self,
        registry: ModelRegistry[ServedVersion],
        *,
        version: str,
        control_mode: ControlMode,
        is_ready: Callable[[], bool],
        metrics: ServerMetrics | None = None,
        request_log: RequestLog | None = None,
        router: "TrafficRouter | None" = None,
        cache: "ResponseCache | None" = None,
        limiter: "TenantLimiter | None" = None,
        sequence_owners: "SequenceOwners | None" = None,
    ) -> None:
        """``metrics`` records requests that reach no model version (servables record the rest);
        ``request_log``, when given, gets one record per inference request; ``router``, ``cache``,
        ``limiter`` and ``sequence_owners`` are fleet mode's (module docstring)."""
        self.registry = registry
        self.version = version
        self.control_mode = control_mode
        self._is_ready = is_ready
        self._metrics = metrics or ServerMetrics(CollectorRegistry(), MetricsConfig(process_metrics=False))
        self._request_log = request_log
        self._router = router
        self._cache = cache
        self._limiter = limiter
        self._owners = sequence_owners

    @property
    def tenant_aware(self) -> bool:
        """Whether transports should read the tenant header (rate limits are on)."""
        return self._limiter is not None

    # ---- health and metadata ----------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._is_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.registry.is_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        servable = self.registry.get(name, version)
        config = servable.config
        mbs = config.max_batch_size
        # As Triton: a request naming a version gets that version; one without, every version that serves.
        versions = [servable.version_str] if version else [str(v) for v in sorted(self.registry.ready_servables(name))]
        return ModelMetadata(
            name=name,
            versions=versions,
            platform=config.platform,
            inputs=[(s.name, s.datatype.name, s.shape_with_batch(mbs)) for s in config.inputs],
            outputs=[(s.name, s.datatype.name, s.shape_with_batch(mbs)) for s in config.outputs],
        )

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.registry.get(name, version).config

    def statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, ModelStats]]:
        if name:
            if version:
                servable = self.registry.get(name, version)  # raises NOT_FOUND for a version that is not one
                servables = {servable.version: servable}
            else:
                servables = self.registry.ready_servables(name)
                if not servables:
                    self.registry.get(name)  # raises NOT_FOUND or UNAVAILABLE with the reason
            return [(name, str(v), s.stats) for v, s in sorted(servables.items())]
        out = []
        for model in self.registry.names():
            for v, s in sorted(self.registry.ready_servables(model).items()):
                out.append((model, str(v), s.stats))
        return out

    # ---- inference ----------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """Resolve, admit, validate, queue and answer one request; raises ``ServingError``."""
        if self._owners is not None and request.parameters and "sequence_id" in request.parameters:
            forwarded = await forwarded_answer(self.registry, self._owners, request)
            if forwarded is not None:
                return forwarded
        admitted = self._limiter is None
        retired: ServedVersion | None = None
        while True:
            call = self._begin(request, self._servable(request))
            servable, config = call.servable, call.servable.config
            try:
                if not admitted:
                    await self._admit(request, config.name)
                    admitted = True
                if self._cache is not None and config.response_cache and request.output_regions is None:
                    outputs = await self._cache.fetch(servable, request.inputs, request.requested_outputs,
                                                      self._submitter(call))
                else:
                    outputs = await self._submitter(call)()
            except ModelNotReady as exc:
                # Its version was swapped out while it awaited its rate limit or the cache: it never queued
                # there, so it is resolved again (a request without a version goes to the one serving now).
                # Once only: a lookup that still gives a stopped version (a server shutting down) fails it.
                if retired is not None or servable.accepting:
                    self._fail(call, exc)
                    raise
                retired = servable
                servable.metrics.inflight -= 1
                continue
            except BaseException as exc:
                self._fail(call, exc)
                raise
            return self._succeed(call, outputs)

    async def run_step(self, model: str, version: str, inputs: list[InputTensor], outputs: list[str],
                       deadline: float | None, request_id: str, priority: int = 0, timeout_us: int = 0,
                       sequence: "tuple[Hashable, bool, bool] | None" = None) -> list[OutputTensor]:
        """One step of an ensemble's request (server/ensemble.py): a request of its own to the composing model,
        with the ensemble request's deadline, id, ``priority``, queue ``timeout`` (microseconds) and, for a step
        that runs sequences, its ``sequence`` (sequence_id, sequence_start, sequence_end)."""
        parameters: dict[str, Any] = {}
        if priority:
            parameters["priority"] = priority
        if timeout_us:
            parameters["timeout"] = timeout_us
        if sequence is not None:
            parameters["sequence_id"], parameters["sequence_start"], parameters["sequence_end"] = sequence
        request = InferRequest(model_name=model, model_version=version, id=request_id, inputs=inputs,
                               requested_outputs=outputs, parameters=parameters, deadline=deadline,
                               ensemble_step=True)
        return (await self.infer(request)).outputs

    def start(self, request: InferRequest) -> "tuple[asyncio.Future[dict[str, np.ndarray]], Call] | None":
        """The first, synchronous half of ``infer`` for callers that answer from a callback (the stream).

        Queues the request and returns its batcher future with the call to pass to ``finish``
        once that future is done; raises ``ServingError`` at once for a request refused before
        queueing. Returns None, having counted nothing, when the request must await something
        before it can queue (a tenant rate limit, the response cache): then use ``infer``.
        """
        if self._limiter is not None:
            return None
        servable = self._servable(request)
        if self._cache is not None and servable.config.response_cache and request.output_regions is None:
            return None  # (outputs in shared memory bypass the cache: see README, "Shared memory")
        call = self._begin(request, servable)
        try:
            return self._submitter(call)(), call
        except BaseException as exc:
            self._fail(call, exc)
            raise

    def finish(self, call: "Call", future: "asyncio.Future[dict[str, np.ndarray]]") -> InferResponse:
        """The second half of ``start``: the response for a done future, or the request's error raised."""
        if future.cancelled():
            exc: BaseException | None = asyncio.CancelledError()
        else:
            exc = future.exception()
        if exc is not None:
            self._fail(call, exc)
            raise exc
        return self._succeed(call, future.result())

    def _servable(self, request: InferRequest) -> ServedVersion:
        """The servable that answers ``request`` (router, then registry); an unresolved request is counted.
        A request continuing a sequence that a version leaving service still holds goes there (its state is
        there): a reload drops no live sequence (server/servable.py, ``Servable.close``)."""
        parameters = request.parameters
        if parameters and "sequence_id" in parameters and self.registry.retiring.servables():
            holder = sequence_holder(self.registry, request)  # perhaps a version leaving service
            if holder is not None:
                return holder
        version = request.model_version
        if not version and self._router is not None:
            version = self._router.version_for(request.model_name, routing_key(request.id, request.parameters))
        try:
            try:
                return self.registry.get(request.model_name, version)
            except ServingError:
                if version == request.model_version:
                    raise
                # The split names a version that is gone here (its folder was removed): serve the latest.
                return self.registry.get(request.model_name)
        except ServingError as exc:
            self.reject(request.model_name, request.model_version, request.id, exc)
            raise

    def _begin(self, request: InferRequest, servable: ServedVersion) -> "Call":
        """From here the request is in flight: it ends in ``_succeed`` or ``_fail``."""
        servable.metrics.inflight += 1
        if request.trace is not None:
            request.trace.version = servable.version_str
        return Call(request, servable, time.perf_counter_ns())

    def _submitter(self, call: "Call") -> "Callable[[], asyncio.Future[dict[str, np.ndarray]]]":
        """Validate the request now; return what queues it (called at once, or by the cache on a miss)."""
        request, servable = call.request, call.servable
        feeds, rows, key = validate(servable.config, request)
        if request.trace is not None:
            request.trace.enqueued_ns = time.perf_counter_ns()
        parameters = request.parameters
        priority, timeout_us = scheduling(parameters) if parameters else (0, 0)
        if priority and request.ensemble_step:  # Triton's rule for a step: a level its model lacks is its default
            levels = servable.priority_levels
            if levels is not None and priority > levels:
                priority = 0
        sequence = sequence_of(parameters) if parameters else None
        return lambda: servable.submit(feeds, rows, key, request.deadline, request.trace, priority, timeout_us,
                                       request.id, sequence)

    def _fail(self, call: "Call", exc: BaseException) -> None:
        servable, request = call.servable, call.request
        elapsed = time.perf_counter_ns() - call.start_ns
        servable.stats.fail.add(elapsed)
        code = code_of(exc)
        if (code is Code.CANCELLED and request.deadline is not None
                and time.monotonic() >= request.deadline - DEADLINE_SKEW_S):
            code = Code.DEADLINE_EXCEEDED  # the caller gave up at its deadline
        metrics = servable.metrics
        metrics.inflight -= 1
        metrics.record_failure(code)
        if request.trace is not None:
            request.trace.outcome = code
        if self._request_log is not None:
            self._request_log.record(request.id, servable.config.name, servable.version_str, code, elapsed)

    def _succeed(self, call: "Call", outputs: dict[str, np.ndarray]) -> InferResponse:
        servable, request = call.servable, call.request
        config = servable.config
        elapsed = time.perf_counter_ns() - call.start_ns
        servable.stats.success.add(elapsed)
        metrics = servable.metrics
        metrics.inflight -= 1
        metrics.record_success(elapsed)
        if self._request_log is not None:
            self._request_log.record(request.id, config.name, servable.version_str, Code.OK, elapsed)
        wanted = request.requested_outputs
        specs = config.outputs if wanted is None else tuple(output_spec(config, name) for name in wanted)
        answered = [_output(spec, outputs[spec.name]) for spec in specs]
        if request.classification:  # this request's own rows: its batch was split already
            answered = classify_outputs(answered, request.classification, config.max_batch_size > 0, servable.labels)
        return InferResponse(model_name=request.model_name, model_version=servable.version_str, id=request.id,
                             outputs=answered, output_regions=request.output_regions)

    async def _admit(self, request: InferRequest, model: str) -> None:
        """The tenant's rate limit (fleet mode); raises ``RateLimited``."""
        limiter = self._limiter
        assert limiter is not None
        tenant = request.tenant
        if not tenant:
            tenant = request.parameters.get(TENANT_PARAMETER) or ""
            if not isinstance(tenant, str):
                raise InvalidInput(f"parameter '{TENANT_PARAMETER}' must be a string, not {tenant!r}")
            if not tenant:
                return
        verdict = limiter.try_admit(tenant, model)
        if verdict is None:
            await limiter.admit(tenant, model)
        elif not verdict:
            raise limiter.refusal(tenant, model)

    def refuse_undecoded(self, model: str, version: str, request_id: str, exc: BaseException) -> BaseException:
        """What the caller gets for a request that failed to decode, counted (``reject``). As Triton, on both
        transports, an unknown or unready model the request names (REST's path, gRPC's ``model_name``) is said
        first (NOT_FOUND, UNAVAILABLE), before what is wrong with the body; ``model`` empty: none could be read."""
        if isinstance(exc, InvalidInput) and model:
            try:
                self.registry.get(model, version)
            except ServingError as unresolved:
                exc = unresolved
        self.reject(model, version, request_id, exc)
        return exc

    def reject(self, model: str, version: str, request_id: str, exc: BaseException) -> None:
        """Count (and log) an inference request that reached no model version: the transport could not
        decode it, or the model is unknown or not ready. Unknown names share one empty metrics label.
        ``exc`` is what the caller gets: a ``ServingError``, or anything else (a bug) counted as INTERNAL."""
        code = code_of(exc)
        self._metrics.record_unresolved(model if model in self.registry.names() else "", code)
        if self._request_log is not None:
            self._request_log.record(request_id, model, version, code, 0)


def _output(spec: TensorSpec, data: np.ndarray) -> OutputTensor:
    if spec.reshape is not None:  # the model's shape back to the dims clients see (a view)
        data = spec.to_client(data)
    return OutputTensor(spec.name, spec.datatype.name, data.shape, data)


