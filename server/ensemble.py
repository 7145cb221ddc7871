"""An ensemble's version: runs its steps (model_store/ensemble.py) as requests to the composing models.

Each step of a request is one inference request to its composing model, made through the dataplane
(``DataPlane.run_step``): it is resolved then, so a composing model reloaded meanwhile serves it from
its new version; it is validated by that model's config, batched with other callers' requests in that
model's own batcher, counted in that model's statistics and metrics, and cached by that model's
response cache. Steps run as soon as the tensors they read exist, so independent steps run at the same
time. The request's deadline, id, priority and queue timeout go to every step, as Triton passes them (a
fleet's rollout splits a step by the request's id; a priority level a composing model does not have runs
at that model's default level; the timeout applies where the model's queue policy allows an override).
An ensemble whose steps run sequences (a sequence model, or an ensemble with such steps) needs a request's
sequence, passes it to those steps only, and runs each sequence's requests one after another in the order
they came, so that no earlier step lets a later request overtake the one before it.

A step that fails fails the request with the step's status code, its message led by the ensemble and
step; the other steps still running are cancelled. A composing model that is not loaded any more fails
the request UNAVAILABLE (not NOT_FOUND: the ensemble the caller named exists).

Loading an ensemble loads its composing models that do not serve yet (as Triton does, in every model
control mode), then checks its steps against their configs (``ensemble.check_steps``). Ensembles may
compose ensembles; ones that compose each other are refused at load.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import time
from typing import Any, Awaitable, Callable, Hashable

import numpy as np

from model_store.config import EnsembleStep, ModelConfig
from model_store.ensemble import check_steps
from model_store.labels import read_labels
from model_store.registry import ModelRegistry
from model_store.repository import ModelSource
from ops.errors import ConfigError, InvalidInput, ModelNotFound, ModelNotReady, ServingError, Unsupported
from ops.metrics import ServableMetrics, ServerMetrics
from ops.statistics import ModelStats
from server.served import ServedVersion
from server.types import InputTensor, OutputTensor

log = logging.getLogger(__name__)

# (model, version, inputs, outputs wanted, deadline, request id, priority, timeout in microseconds, sequence)
# -> the outputs: ``DataPlane.run_step``.
SequenceFlags = tuple[Hashable, bool, bool]  # (sequence_id, sequence_start, sequence_end)
StepRunner = Callable[[str, str, list[InputTensor], list[str], "float | None", str, int, int, "SequenceFlags | None"],
                      Awaitable[list[OutputTensor]]]
# What every step of one request takes from it: (deadline, request id, priority, timeout in microseconds,
# sequence: the request's for a step that runs sequences, else None).
_StepTerms = tuple["float | None", str, int, int, "SequenceFlags | None"]
# The ensembles being loaded by the task at hand, outermost first: an ensemble that composes one of them
# would wait for its own load.
_LOADING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("fleetserve_ensembles_loading", default=())


class EnsembleServable(ServedVersion):
    """One version of an ensemble; see the module docstring. Loop-bound."""

    def __init__(self, config: ModelConfig, version: int, run_step: StepRunner,
                 metrics: ServableMetrics | None = None, labels: dict | None = None,
                 sequence_steps: frozenset[int] = frozenset()) -> None:
        """``sequence_steps``: the indices of the steps that run sequences (a sequence model, or an ensemble with
        such steps): those steps get a request's sequence, and each sequence's requests run one at a time."""
        assert config.ensemble is not None
        self.config = config
        self.version = version
        self.version_str = str(version)
        self.stats = ModelStats()
        self.metrics = metrics or ServableMetrics.detached(config.name, self.version_str)
        self.labels = labels or {}
        self._run_step = run_step
        self.sequence_steps = sequence_steps
        # The last request of each sequence submitted, until it is done: the next one of that sequence waits for it.
        self._sequence_tails: dict[Hashable, asyncio.Task[dict[str, np.ndarray]]] = {}
        self._accepting = False
        self._running: set[asyncio.Task[dict[str, np.ndarray]]] = set()
        # Which steps each step waits for: the writers of the tensors it reads.
        writers = {tensor: i for i, step in enumerate(config.ensemble.steps) for _, tensor in step.output_map}
        self._after = [frozenset(writers[t] for _, t in step.input_map if t in writers)
                       for step in config.ensemble.steps]
        self._datatypes = {spec.name: spec.datatype.name for spec in config.inputs}

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queue_depth(self) -> int:
        return 0  # its steps wait in the composing models' queues, and are counted there

    @property
    def priority_levels(self) -> None:
        return None  # any: each step reads the request's priority in its own model's levels

    async def start(self) -> None:
        self._accepting = True

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, key: tuple, deadline: float | None, trace: Any = None,
        priority: int = 0, timeout_us: int = 0, request_id: str = "",
        sequence: "tuple[Hashable, bool, bool] | None" = None,
    ) -> "asyncio.Future[dict[str, np.ndarray]]":
        name = self.config.name
        if sequence is not None and not self.sequence_steps:
            raise Unsupported(f"model '{name}' is an ensemble none of whose steps runs sequences: send the request "
                              "without sequence_id, sequence_start and sequence_end")
        if sequence is None and self.sequence_steps:
            assert self.config.ensemble is not None
            models = sorted({self.config.ensemble.steps[i].model_name for i in self.sequence_steps})
            raise InvalidInput(f"model '{name}' runs sequences (its step(s) running {', '.join(models)}): a request "
                               "needs a sequence_id naming its sequence, with sequence_start on the sequence's first "
                               "request and sequence_end on its last")
        if not self._accepting:
            raise ModelNotReady(f"model '{self.config.name}' version {self.version} is not accepting requests "
                                "(stopping or not started)")
        if trace is not None:  # its steps start now (their own requests are not traced)
            trace.started_ns = time.perf_counter_ns()
        terms: _StepTerms = (deadline, request_id, priority, timeout_us, sequence)
        after = None
        if sequence is not None:  # after the sequence's request before it: a sequence's steps run in its order
            after = self._sequence_tails.get(sequence[0])
        task = asyncio.get_running_loop().create_task(self._run(inputs, rows, terms, after))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        if sequence is not None:
            sequence_id = sequence[0]
            self._sequence_tails[sequence_id] = task
            task.add_done_callback(lambda done: self._sequence_tails.pop(sequence_id, None)
                                   if self._sequence_tails.get(sequence_id) is done else None)
        return task

    async def _run(self, inputs: dict[str, np.ndarray], rows: int, request: "_StepTerms",
                   after: "asyncio.Task[Any] | None" = None) -> dict[str, np.ndarray]:
        if after is not None and not after.done():
            await asyncio.wait([after])  # its outcome is its caller's: this request goes on either way
        start = time.perf_counter_ns()
        assert self.config.ensemble is not None
        steps = self.config.ensemble.steps
        tensors: dict[str, tuple[str, np.ndarray]] = {
            name: (self._datatypes[name], data) for name, data in inputs.items()
        }
        done: set[int] = set()
        running: dict[asyncio.Task[list[OutputTensor]], int] = {}
        try:
            while len(done) < len(steps):
                ready = [i for i in range(len(steps)) if i not in done and i not in running.values()
                         and self._after[i] <= done]
                if len(ready) == 1 and not running:  # the one step that can run: awaited here, no task of its own
                    index = ready[0]
                    try:
                        outputs = await self._step(index, tensors, request)
                    except ServingError as exc:
                        raise self._step_error(index, exc) from exc
                    self._keep(steps[index], outputs, tensors)
                    done.add(index)
                    continue
                for index in ready:
                    running[asyncio.ensure_future(self._step(index, tensors, request))] = index
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    index = running.pop(task)
                    error = task.exception()
                    if error is not None:
                        raise self._step_error(index, error) if isinstance(error, ServingError) else error
                    self._keep(steps[index], task.result(), tensors)
                    done.add(index)
        finally:
            for task in running:
                task.cancel()
        elapsed = time.perf_counter_ns() - start
        # An ensemble's "execution" is one request's steps (compute); it has no queue of its own (its steps wait in
        # their models' queues, counted there), so its queue time is 0, counted once per request as Triton's
        # statistics count it: perf_analyzer finds the version that served by the queue count growing.
        self.stats.queue.add(0)
        self.stats.record_batch(rows, 1, 0, elapsed, 0)
        return {spec.name: tensors[spec.name][1] for spec in self.config.outputs}

    def _step(self, index: int, tensors: dict[str, tuple[str, np.ndarray]],
              request: "_StepTerms") -> Awaitable[list[OutputTensor]]:
        assert self.config.ensemble is not None
        step = self.config.ensemble.steps[index]
        if request[4] is not None and index not in self.sequence_steps:
            request = (*request[:4], None)
        feeds = []
        for name, tensor in step.input_map:
            datatype, data = tensors[tensor]
            feeds.append(InputTensor(name, datatype, data.shape, data))
        return self._run_step(step.model_name, step.version_text, feeds, [name for name, _ in step.output_map],
                              *request)

    @staticmethod
    def _keep(step: EnsembleStep, outputs: list[OutputTensor], tensors: dict[str, tuple[str, np.ndarray]]) -> None:
        """A finished step's outputs as the ensemble tensors its output_map names."""
        written = dict(step.output_map)
        for tensor in outputs:
            tensors[written[tensor.name]] = (tensor.datatype, tensor.data)

    def _step_error(self, index: int, exc: ServingError) -> ServingError:
        """A step's error as the ensemble's: the same status, the ensemble and step leading its message."""
        assert self.config.ensemble is not None
        step = self.config.ensemble.steps[index]
        where = f"model '{self.config.name}' version {self.version}, step {index + 1} (model '{step.model_name}')"
        if isinstance(exc, ModelNotFound):  # the composing model went: the ensemble is there, but cannot serve
            return ModelNotReady(f"{where} cannot run: {exc.message}")
        wrapped = copy.copy(exc)
        wrapped.message = f"{where}: {exc.message}"
        wrapped.args = (wrapped.message,)
        return wrapped

    def drain(self) -> None:
        pass  # its steps are queued in the composing models, which drain their own

    async def cut(self, reason: str) -> None:
        self._accepting = False  # the composing models' cut fails the steps running; none starts after

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Stop taking requests; wait for those running (up to ``drain_timeout_s``), cancel what is left."""
        self._accepting = False
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
        self.metrics.release()


async def load_ensemble(
    source: ModelSource, version: int, registry: ModelRegistry[ServedVersion], run_step: StepRunner,
    metrics: ServerMetrics | None = None,
) -> EnsembleServable:
    """Load one version of ensemble ``source``: its composing models first, then the checks of its steps."""
    config = source.build_ensemble_config()
    assert config.ensemble is not None
    token = _LOADING.set((*_LOADING.get(), config.name))
    try:
        for step in config.ensemble.steps:
            await _serve(config.name, step, registry)
    finally:
        _LOADING.reset(token)
    _check_acyclic(config, registry)
    check_steps(config, lambda step: registry.get(step.model_name, step.version_text).config, source.config_source)
    sequence_steps = frozenset(i for i, step in enumerate(config.ensemble.steps)
                               if _runs_sequences(registry.get(step.model_name, step.version_text)))
    labels = read_labels(source.path, config)
    handle = metrics.servable(config.name, str(version)) if metrics is not None else None
    servable = EnsembleServable(config, version, run_step, handle, labels, sequence_steps)
    await servable.start()
    log.info("model '%s' version %d ready: an ensemble of %s", config.name, version, ", ".join(config.ensemble.models))
    return servable


def _runs_sequences(served: ServedVersion) -> bool:
    """Whether a step's version takes a request's sequence: a sequence model, or an ensemble with such steps."""
    if isinstance(served, EnsembleServable):
        return bool(served.sequence_steps)
    return served.config.sequence_batching is not None


def _cycle(chain: tuple[str, ...]) -> ConfigError:
    return ConfigError(f"model '{chain[0]}': ensembles compose each other ({' -> '.join(chain)}); an ensemble cannot "
                       "run itself, directly or through another")


async def _serve(ensemble: str, step: EnsembleStep, registry: ModelRegistry[ServedVersion]) -> None:
    """Load the version ``step`` runs unless it serves already; raises ``ConfigError`` saying why it cannot."""
    loading = _LOADING.get()
    if step.model_name in loading:  # its load waits for ours: loading it again would wait forever
        raise _cycle((*loading[loading.index(step.model_name):], step.model_name))
    if registry.is_ready(step.model_name, step.version_text):
        return
    which = f"model '{step.model_name}'" + (f" version {step.model_version}" if step.model_version > 0 else "")
    failed = ""
    try:
        await registry.load(step.model_name)
    except ServingError as exc:  # a copy loaded earlier, or the version asked for, may serve all the same
        failed = exc.message
    try:
        registry.get(step.model_name, step.version_text)
    except ServingError as exc:
        raise ConfigError(f"model '{ensemble}': its step's {which} cannot serve: {failed or exc.message}") from exc


def _check_acyclic(config: ModelConfig, registry: ModelRegistry[ServedVersion]) -> None:
    """Refuse an ensemble that reaches itself through the ensembles serving now (by name: any of their
    versions), so that no request can run steps forever."""
    def visit(chain: tuple[str, ...]) -> None:
        for served in registry.ready_servables(chain[-1]).values() if len(chain) > 1 else ():
            if served.config.ensemble is not None:
                for name in served.config.ensemble.models:
                    if name == chain[0]:
                        raise _cycle((*chain, name))
                    if name not in chain:
                        visit((*chain, name))

    assert config.ensemble is not None
    for name in config.ensemble.models:
        visit((config.name, name))


async def unload(registry: ModelRegistry[ServedVersion], name: str, dependents: bool) -> None:
    """Unload model ``name``; with ``dependents`` (Triton's ``unload_dependents``), the models it runs when it is an
    ensemble too, and theirs, but those another loaded ensemble still runs."""
    composing = composing_models(registry, name) if dependents else ()
    await registry.unload(name)
    for model in dependents_to_unload(registry, composing):
        await registry.unload(model)


def composing_models(registry: ModelRegistry[ServedVersion], name: str) -> tuple[str, ...]:
    """The models the serving versions of ensemble ``name`` run, and theirs in turn (nested ensembles), each
    once; () for a model that is no ensemble."""
    found: dict[str, None] = {}

    def visit(model: str) -> None:
        for served in registry.ready_servables(model).values():
            if served.config.ensemble is not None:
                for step_model in served.config.ensemble.models:
                    if step_model != name and step_model not in found:
                        found[step_model] = None
                        visit(step_model)

    visit(name)
    return tuple(found)


def dependents_to_unload(registry: ModelRegistry[ServedVersion], composing: tuple[str, ...]) -> list[str]:
    """Which of ``composing`` (an unloaded ensemble's ``composing_models``) to unload with it: those loaded that
    no ensemble left serving runs."""
    kept: set[str] = set()
    for model in registry.names():
        if model not in composing:
            kept.update(composing_models(registry, model))
    return [model for model in composing if model not in kept and model in registry.names()]
