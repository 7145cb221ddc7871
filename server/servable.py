"""One loaded model version: its config, kernel, batcher, statistics and class labels.

Built by ``load_servable`` off the hot path; ``infer`` is the per-request path
(validated inputs in, outputs out). Closing drains the batcher before the
kernel is released, so a version swap never fails requests already admitted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Hashable, Mapping

import numpy as np

from batching.batcher import DynamicBatcher, ScheduleEstimate
from kernels.ort import MAX_INTRA_OP_THREADS, BatchResult, KernelOptions, OrtKernel, read_signature
from kernels.placement import GroupPlacement, describe_plans
from kernels.providers import SHORT_TO_ORT, accelerator_options, cuda_model_parameters
from model_store.config import PARAMETERS, InstanceKind, ModelConfig
from model_store import warmup
from model_store.labels import Labels, read_labels
from model_store.repository import ModelSource
from ops.errors import ConfigError, InvalidInput, Unsupported
from ops.metrics import ServableMetrics, ServerMetrics
from ops.statistics import ModelStats
from server.scheduling import batcher_config
from server.served import ServedVersion
from server.sequences import SequenceRunner, read_initial_states, warmup_feeds

if TYPE_CHECKING:  # fleet mode only: it imports grpc and redis
    from server.sequence_owners import SequenceOwners

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingDefaults:
    """Server-wide defaults a model config does not set."""

    max_queue_size: int = 1024
    warmup: bool = True  # the zero-filled warm-up run of a version without model_warmup samples
    # A sequence model's version taken out of service (a reload, an unload, a newer version) lets its live
    # sequences go on to their end for this long (the server's --drain-timeout); then they end.
    sequence_finish_s: float = 30.0
    # Fleet mode: where the fleet records which replica holds each sequence (server/sequence_owners.py).
    sequence_owners: "SequenceOwners | None" = None


class _Work:
    """One request inside the batcher."""

    __slots__ = ("inputs", "enqueued_ns", "trace")

    def __init__(self, inputs: dict[str, np.ndarray], trace: Any = None) -> None:
        self.inputs = inputs
        self.enqueued_ns = time.perf_counter_ns()
        self.trace = trace  # an ops.tracing.RequestTrace, or None (tracing off)


Outputs = list[dict[str, np.ndarray]]  # one dict of output arrays per request of a batch
DEFAULT_INLINE_RUN_MAX_US = 250


class RunPlacement:
    """Where each batch runs: on the event loop when it is tiny, else in the kernel's threads.

    Handing a batch to a worker thread and its result back costs about 100 us of CPU here
    (a futex wake, a self-pipe write, GIL hand-offs), several times what a tiny model's run
    costs. A batch whose compute time for its size (per power-of-two row bucket) is under
    ``max_inline_ns`` therefore runs inline, holding the loop no longer than handling one
    gRPC request does (about 300 us here); every other batch, and any size not measured yet, goes to the thread pool,
    so a slow model never blocks the transports. ``max_inline_ns`` 0 disables it.

    The estimate follows the lower envelope of the measured times: a faster run lowers it at
    once, slower runs raise it slowly (1/64 of the gap per run). Contention only ever adds
    time (a run in the pool waits for the GIL behind the transport's threads), so a plain
    average would keep a tiny model in the pool by the very cost of the pool; a model that
    really got slower still moves back to the pool after a dozen or so slow runs.
    """

    __slots__ = ("max_inline_ns", "_floor_ns")

    def __init__(self, max_inline_ns: int) -> None:
        self.max_inline_ns = max_inline_ns
        self._floor_ns: dict[int, float] = {}

    def inline(self, rows: int) -> bool:
        estimate = self._floor_ns.get(rows.bit_length())
        return estimate is not None and estimate < self.max_inline_ns

    def observe(self, rows: int, ns: int) -> None:
        bucket = rows.bit_length()
        estimate = self._floor_ns.get(bucket)
        if estimate is None or ns < estimate:
            self._floor_ns[bucket] = ns
        else:
            self._floor_ns[bucket] = estimate + (ns - estimate) / 64


class Servable(ServedVersion):
    """See the module docstring. Loop-bound except ``kernel`` runs in its executor.

    ``kernel`` is loaded: its instance count (which, with a GPU provider, depends on the visible GPUs) caps the
    batches in flight and is what ``fleetserve_kernel_instances`` reports; the config keeps the groups as written.
    """

    def __init__(
        self, config: ModelConfig, version: int, kernel: OrtKernel, defaults: ServingDefaults,
        metrics: ServableMetrics | None = None, labels: Labels | None = None,
        initial_states: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``labels``: the outputs' class labels (``read_labels``), for classification; read-only.
        ``initial_states``: a sequence model's (server/sequences.py, ``read_initial_states``)."""
        self.config = config
        self.labels: Labels = labels or {}
        self.version = version
        self.version_str = str(version)
        self.kernel = kernel
        self.instances = max(1, kernel.instances)
        self._sequence_finish_s = defaults.sequence_finish_s
        self.stats = ModelStats()
        self.metrics = metrics or ServableMetrics.detached(config.name, self.version_str)
        batching = config.max_batch_size > 0 and config.batching is not None
        self.batcher: DynamicBatcher[_Work, dict[str, np.ndarray]] = DynamicBatcher(
            self._run_batch,
            batcher_config(config, defaults.max_queue_size, self.instances),
            name=f"model '{config.name}' version {version}",
        )
        # Without dynamic batching a batching model still runs each request's own rows.
        self.rows_per_item = batching
        self.placement = RunPlacement(_int_parameter(config, "inline_run_max_us", DEFAULT_INLINE_RUN_MAX_US) * 1000)
        self.metrics.attach(self.batcher, self.instances)
        self.sequences: SequenceRunner | None = None
        if config.sequence_batching is not None:
            self.sequences = SequenceRunner(config, dict(initial_states or {}), self._submit, self.batcher.name,
                                            defaults.sequence_owners)
            self.metrics.attach_sequences(self.sequences.table)

    async def start(self) -> None:
        await self.batcher.start()

    @property
    def accepting(self) -> bool:
        return self.batcher.accepting

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    @property
    def priority_levels(self) -> int:
        return len(self.batcher.config.queue_policies())  # what the batcher's submit takes (0: the default)

    @property
    def closes_in_background(self) -> bool:
        return self.sequences is not None and self.sequences.table.live > 0

    def holds_sequence(self, sequence_id: Hashable) -> bool:
        return self.sequences is not None and self.sequences.table.holds(sequence_id)

    @property
    def schedule_estimate(self) -> ScheduleEstimate:
        """The scheduler's current run-time fit and choices (read-only; for metrics, not the hot path)."""
        return self.batcher.estimate

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, key: tuple, deadline: float | None, trace: Any = None,
        priority: int = 0, timeout_us: int = 0, request_id: str = "",
        sequence: "tuple[Hashable, bool, bool] | None" = None,
    ) -> asyncio.Future:
        """Queue one validated request; raises what ``DynamicBatcher.submit`` raises (priority range, full queue...).
        ``sequence``: the request's (sequence_id, sequence_start, sequence_end), for a model with sequence_batching."""
        if sequence is not None or self.sequences is not None:
            return self._sequence_submit(inputs, rows, key, deadline, trace, priority, timeout_us, sequence)
        return self._submit(inputs, rows, key, deadline, trace, priority, timeout_us)

    def _submit(self, inputs: dict[str, np.ndarray], rows: int, key: tuple, deadline: float | None, trace: Any,
                priority: int, timeout_us: int) -> asyncio.Future:
        return self.batcher.submit(
            _Work(inputs, trace), rows if self.rows_per_item else 1, key, deadline, priority, timeout_us
        )

    def _sequence_submit(self, inputs: dict[str, np.ndarray], rows: int, key: tuple, deadline: float | None,
                         trace: Any, priority: int, timeout_us: int,
                         sequence: "tuple[Hashable, bool, bool] | None") -> asyncio.Future:
        name = self.config.name
        if self.sequences is None:
            raise Unsupported(f"model '{name}' runs no sequences (its config has no sequence_batching): each request "
                              "runs on its own, with no state kept between requests; send it without 'sequence_id', "
                              "'sequence_start' and 'sequence_end'")
        if sequence is None:
            raise InvalidInput(f"model '{name}' runs sequences: a request needs a sequence_id naming its sequence, "
                               "with sequence_start on the sequence's first request and sequence_end on its last")
        return self.sequences.submit(inputs, rows, key, deadline, trace, priority, timeout_us, sequence)

    def _run_batch(self, items: list[_Work]) -> Outputs | Awaitable[Outputs]:
        """Run a batch here (a tiny one: its outputs, at once) or in the kernel's threads (an awaitable)."""
        start = time.perf_counter_ns()
        for item in items:
            if item.trace is not None:
                item.trace.started_ns = start
        inputs = [i.inputs for i in items]
        rows = sum(len(next(iter(x.values()), ())) for x in inputs) if self.config.max_batch_size > 0 else 1
        if self.placement.inline(rows):
            return self._ran(rows, items, start, self.kernel.run_batch(inputs))
        return self._run_in_pool(rows, items, start, inputs)

    async def _run_in_pool(self, rows: int, items: list[_Work], start: int,
                           inputs: list[dict[str, np.ndarray]]) -> Outputs:
        result = await asyncio.get_running_loop().run_in_executor(self.kernel.executor, self.kernel.run_batch, inputs)
        # How long the loop took to pick the results up: what a busy loop adds to every request.
        self.batcher.record_loop_lag((time.perf_counter_ns() - result.end_ns) / 1e9)
        return self._ran(rows, items, start, result)

    def _ran(self, rows: int, items: list[_Work], start: int, result: BatchResult) -> Outputs:
        """Record a batch that ran: its requests' queue times (only now, as Triton: a batch that fails counts its
        requests as failures, never in queue or compute, so queue, compute and success counts stay equal)."""
        stats = self.stats
        queue_time = self.metrics.queue
        for item in items:
            stats.queue.add(start - item.enqueued_ns)
            queue_time.observe(start - item.enqueued_ns)
        self.placement.observe(rows, result.input_ns + result.infer_ns + result.output_ns)
        stats.record_batch(rows, len(items), result.input_ns, result.infer_ns, result.output_ns)
        # The scheduler learns from compute time, which a busy event loop does not inflate.
        self.batcher.record_run_time(rows, (result.input_ns + result.infer_ns + result.output_ns) / 1e9)
        self.metrics.record_batch(rows, result.input_ns, result.infer_ns, result.output_ns,
                                  time.perf_counter_ns() - start)
        return result.outputs

    def drain(self) -> None:
        """Shutdown: dispatch queued requests without waiting for their batches to fill; still accepting. Live
        sequences are not waited for any more (no request of theirs will come)."""
        self.batcher.drain()
        if self.sequences is not None:
            self.sequences.table.stop_finishing()

    async def cut(self, reason: str) -> None:
        """Shutdown, as its drain timeout ends: what is queued or running fails now with ``ShuttingDown``
        (UNAVAILABLE, ``reason`` first), then the kernel's runs in progress are ended, so ``close`` releases
        the kernel at once instead of waiting out a long run. The batcher goes first: the runs it gave up
        must not answer their requests with the kernel's error."""
        if self.sequences is not None:
            self.sequences.table.stop_finishing()
        await self.batcher.stop(0, cut_reason=reason)
        self.kernel.terminate()

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Let live sequences finish (up to ``ServingDefaults.sequence_finish_s``), finish queued and running
        requests, then release the kernel."""
        if self.sequences is not None:  # then requests held behind their sequence's fail; the running ones finish
            left = await self.sequences.table.finish(
                self._sequence_finish_s, f"model '{self.config.name}' version {self.version} is leaving service and "
                "finishes its live sequences only; start the sequence without naming this version")
            if left:
                log.warning("model '%s' version %d: %d live sequence(s) had not ended %.0f s after it left service; "
                            "they end now", self.config.name, self.version, left, self._sequence_finish_s)
            self.sequences.close("the model version is unloading")
            self.metrics.detach_sequences(self.sequences.table)
        await self.batcher.stop(drain_timeout_s)
        self.metrics.detach(self.batcher, self.instances)
        self.metrics.release()
        await asyncio.get_running_loop().run_in_executor(None, self.kernel.close)


def _int_parameter(config: ModelConfig, key: str, default: int) -> int:
    text = config.parameters.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"model '{config.name}': parameter {key} must be a whole number >= 0, got {text!r}")
    return value


def _intra_op_threads(config: ModelConfig) -> int:
    threads = _int_parameter(config, "intra_op_thread_count", 0)
    if threads > MAX_INTRA_OP_THREADS:
        raise ConfigError(
            f"model '{config.name}': parameter intra_op_thread_count is {threads}, but onnxruntime starts that many "
            f"threads for the model version: use at most {MAX_INTRA_OP_THREADS}, or 0 (or leave it out) to share "
            "this machine's cores among the instances"
        )
    return threads


def kernel_options(config: ModelConfig) -> KernelOptions:
    """The kernel's options from the (checked) config: accelerator parameters become provider options, and
    Triton's deprecated CUDA model parameters fill in the CUDA options the accelerator's own do not set."""
    provider_options = {
        SHORT_TO_ORT[name]: accelerator_options(name, parameters)
        for name, parameters in config.accelerator_parameters.items()
    }
    legacy = cuda_model_parameters(config.parameters)
    if legacy:
        cuda = SHORT_TO_ORT["cuda"]
        provider_options[cuda] = {**legacy, **provider_options.get(cuda, {})}
    return KernelOptions(
        providers=config.execution_accelerators,
        provider_options=provider_options,
        allow_gpu=config.instance_kind is not InstanceKind.CPU,
        groups=tuple(GroupPlacement(group.count, group.gpus) for group in config.instance_groups),
        intra_op_threads=_intra_op_threads(config),
        graph_optimization_level=config.graph_optimization_level,
    )


def _warm_up(kernel: OrtKernel, config: ModelConfig, model_folder: Path, initial: Mapping[str, np.ndarray]) -> None:
    """Run the config's warm-up samples (Triton's model_warmup; a failure fails the load, as in Triton), else one
    zero-filled request (best effort), so the first caller does not pay for lazy initialisation."""
    for index, sample in enumerate(config.model_warmup):
        try:
            inputs = warmup.feeds(sample, model_folder, batching=config.max_batch_size > 0)
            inputs = {spec.name: spec.to_model(inputs[spec.name]) for spec in config.inputs}  # Triton's reshape
            if config.sequence_batching is not None:  # a sequence's first request: its controls, initial states
                inputs.update(warmup_feeds(config, dict(initial), sample.batch_size))
            for _ in range(sample.count):
                kernel.warm_up(inputs)
        except Exception as exc:
            kernel.close()
            raise ConfigError(f"model '{config.name}': model_warmup[{index}] {sample.name!r} failed: {exc}") from exc
    if config.model_warmup:
        return
    feeds: dict[str, np.ndarray] = {}
    for spec in config.inputs:
        dims = tuple(1 if d < 0 else d for d in spec.model_dims)
        shape = ((1,) + dims) if config.max_batch_size > 0 else dims
        if spec.datatype.name == "BYTES":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.datatype.numpy)
    if config.sequence_batching is not None:
        feeds.update(warmup_feeds(config, dict(initial), 1))
    try:
        kernel.warm_up(feeds)
    except Exception as exc:  # a model may reject zeros or unit dims; warm-up is best effort
        log.info("%s: warm-up run skipped: %s", config.name, exc)


def _warn_of_unread_parameters(source: ModelSource, config: ModelConfig) -> None:
    """Triton passes parameters to the model's backend, which ignores keys it does not know; so does fleetserve,
    but says so: a Triton onnxruntime backend setting (execution_mode, ...) is not applied here."""
    if config.unread_parameters:
        log.warning(
            "model '%s': parameters %s in %s are not read by fleetserve and have no effect; it reads: %s",
            config.name, ", ".join(config.unread_parameters), source.config_source, ", ".join(PARAMETERS),
        )


def _load_sync(
    source: ModelSource, version: int, model_path: Path, defaults: ServingDefaults,
) -> tuple[ModelConfig, OrtKernel, Labels, Mapping[str, np.ndarray]]:
    inputs, outputs = read_signature(model_path)
    config = source.build_config(inputs, outputs)
    _int_parameter(config, "inline_run_max_us", 0)  # checked before a session exists to leak
    labels = read_labels(source.path, config)  # as Triton, a label file that cannot be read fails the load
    initial = read_initial_states(config, source.path) if config.sequence_batching is not None else {}
    _warn_of_unread_parameters(source, config)
    kernel = OrtKernel(model_path, kernel_options(config))
    kernel.load()
    config = config.placed(on_gpu=any(plan.device_id is not None for plan in kernel.plans))
    if defaults.warmup or config.model_warmup:  # configured samples always run: a failing one fails the load
        _warm_up(kernel, config, source.path, initial)
    return config, kernel, labels, initial


async def load_servable(
    source: ModelSource, version: int, defaults: ServingDefaults, metrics: ServerMetrics | None = None
) -> Servable:
    """Load one version in a worker thread (session creation is slow and holds the GIL).

    With ``metrics``, the servable records on that server's handle for its name and version."""
    model_path = source.versions.get(version)
    if model_path is None or not os.path.isfile(model_path):
        raise ConfigError(f"model '{source.name}' version {version}: no model file at {model_path}")
    loop = asyncio.get_running_loop()
    config, kernel, labels, initial = await loop.run_in_executor(None, _load_sync, source, version, model_path,
                                                                  defaults)
    handle = metrics.servable(config.name, str(version)) if metrics is not None else None
    servable = Servable(config, version, kernel, defaults, handle, labels, initial)
    await servable.start()
    choice = kernel.provider_choice
    log.info("model '%s' version %d ready on %s (%s)", source.name, version,
             ", ".join(choice.providers) if choice else "?", describe_plans(kernel.plans))
    return servable
