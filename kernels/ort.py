"""The onnxruntime kernel: one model version's session(s) and the threads that run them.

Contract:
- ``OrtKernel(...)`` does no I/O; ``load()`` creates the sessions and is slow and
  GIL-heavy, so callers run it off the event loop.
- ``run_batch(requests)`` concatenates the requests' inputs along the batch
  dimension, runs a session once, and splits the outputs back. It is
  synchronous, thread-safe, and meant to run in ``executor``, a pool with one
  thread per model instance (onnxruntime's ``run()`` releases the GIL).
- Instances follow Triton's instance groups (``kernels/placement.py``): with a GPU
  provider, ``count`` on each GPU a group lists, or on each visible GPU
  (``ops/visible_gpus.py``, found at the first load that needs it) when it lists
  none; there is one session per GPU, and each run goes to the session with the
  fewest runs in flight for its instance count. On the CPU one session serves
  every instance. The real count (``instances``) is known after ``load()``.
- ``terminate()`` (shutdown, at its drain timeout) ends the runs in progress, which then fail, and any
  later run; ``close()`` then returns at once instead of waiting out a long run.
- onnxruntime exceptions are translated here into ``BackendError`` /
  ``InvalidInput`` (for shape/type errors the runtime detects).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kernels.placement import (
    CPU_PROVIDER, GroupPlacement, SessionPlan, cpu_instances, describe_plans, gpu_instance_devices, plan_sessions,
)
from kernels.providers import SHORT_TO_ORT, ProviderChoice, choose_providers
from kernels.signature import TensorSignature, read_signature, session_signature
from ops.cores import available_cores
from ops.errors import BackendError, ConfigError, InvalidInput
from ops.visible_gpus import VisibleGpus, visible_gpus

__all__ = ["GRAPH_LEVELS", "MAX_INTRA_OP_THREADS", "BatchResult", "GroupPlacement", "KernelOptions", "OrtKernel",
           "SessionPlan", "TensorSignature", "default_intra_op_threads", "describe_plans", "plan_sessions",
           "read_signature"]

log = logging.getLogger(__name__)



# Triton's optimization.graph.level -> onnxruntime GraphOptimizationLevel value (as Triton's onnxruntime
# backend maps it: -1 basic, 1 basic and extended, 2 none; 0, the default, all). Not ort's own numbering.
# The one list of levels: model_store/options.py refuses a config that states any other.
GRAPH_LEVELS: dict[int, int] = {-1: 1, 0: 99, 1: 2, 2: 0}


@dataclass(frozen=True)
class KernelOptions:
    """How to build sessions; derived from the model config by the composition root."""

    providers: tuple[str, ...] = ()  # short names; empty: TensorRT, CUDA, CPU as available
    allow_gpu: bool = True
    # The instance groups (kernels/placement.py): their instances are the concurrent runs (executor threads).
    groups: tuple[GroupPlacement, ...] = (GroupPlacement(),)
    intra_op_threads: int = 0  # 0: default_intra_op_threads(instances), the cores shared by the real instances
    graph_optimization_level: int | None = None  # optimization.graph.level, Triton's meaning (GRAPH_LEVELS); None: all
    # Options of each provider, by onnxruntime name (providers.accelerator_options); device_id is added per GPU.
    provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    extra_session_config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResult:
    """Per-request outputs of one run, and where the time went (nanoseconds)."""

    outputs: list[dict[str, np.ndarray]]
    input_ns: int
    infer_ns: int
    output_ns: int
    end_ns: int = 0  # time.perf_counter_ns() when the run finished (in the thread that ran it)


def _bytes_to_str(name: str, data: np.ndarray) -> np.ndarray:
    """onnxruntime string tensors take str; BYTES arrive as bytes and must be UTF-8."""
    flat = data.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    try:
        for i, item in enumerate(flat):
            out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{name}': element {i} is not UTF-8 text, which ONNX string tensors require") from exc
    return out.reshape(data.shape)


def _str_to_bytes(data: np.ndarray) -> np.ndarray:
    flat = data.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out.reshape(data.shape)


# The most intra_op_thread_count may ask for. onnxruntime starts that many threads (less one) when the
# session is created, with no bound of its own: 16,000 took 8 s and 1.3 GB here, 100,000 was still
# allocating (1.4 GB after 30 s, no thread started yet), and a thread it cannot start hangs the load.
# 1,024 is above the hardware threads of today's largest servers (768 on two 192-core EPYCs with SMT)
# and the same on every machine, so a config loads, or not, alike across a fleet.
MAX_INTRA_OP_THREADS = 1024


def default_intra_op_threads(instances: int, cores: int | None = None) -> int:
    """onnxruntime threads per instance when the config does not say: the cores, shared by the instances.

    One core fewer (left to the event loop) was tried and measured on this project's 2-core machine,
    alternating configurations run by run: the tiny add_one served about 9% fewer batch-1 requests at
    concurrency 64 with one thread than with two (1,705-1,722 against 1,866-1,874 req/s), 64-row mlp
    requests 15-20% fewer, and batch-1 mlp was within the noise (1,345-1,572 against 1,351-1,407).
    ``cores`` defaults to the CPUs this process may run on: its affinity, capped by its cgroup's CPU
    limit (ops/cores.py), so a pod limited to 2 CPUs on a 64-core node starts 2 threads, not 64.
    """
    if cores is None:
        cores = available_cores()
    return max(1, cores // max(1, instances))


class OrtKernel:
    """One ONNX model file served by onnxruntime. See the module docstring."""

    def __init__(
        self, model_path: Path, options: KernelOptions, find_gpus: Callable[[], VisibleGpus] = visible_gpus
    ) -> None:
        """``find_gpus``: the visible GPUs, asked only when a GPU provider serves a group that lists no ``gpus``."""
        self.model_path = model_path
        self.options = options
        self._find_gpus = find_gpus
        self._executor: ThreadPoolExecutor | None = None
        self._sessions: list[object] = []
        self._capacity: list[int] = []  # instances per session
        self._busy: list[int] = []  # runs in flight per session (used when there are several)
        self._lock = threading.Lock()
        self.plans: tuple[SessionPlan, ...] = ()
        self.provider_choice: ProviderChoice | None = None
        self.inputs: tuple[TensorSignature, ...] = ()
        self.outputs: tuple[TensorSignature, ...] = ()
        self._output_names: list[str] = []
        self._string_inputs: frozenset[str] = frozenset()
        self._string_outputs: frozenset[str] = frozenset()
        self._run_options: Any = None  # one onnxruntime RunOptions for every run: terminate() flags it

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool the runs belong in: one thread per instance, made by ``load()``."""
        if self._executor is None:
            raise BackendError(f"{self.model_path} is not loaded")
        return self._executor

    @property
    def instances(self) -> int:
        """Runs that may be in flight at once: the instances the sessions serve (0 before ``load()``)."""
        return sum(plan.instances for plan in self.plans)

    def load(self) -> None:
        """Create the sessions. Raises ConfigError when the file is missing or not a usable model."""
        import onnxruntime as ort

        self._run_options = ort.RunOptions()
        level = self.options.graph_optimization_level
        if level is not None and level not in GRAPH_LEVELS:
            raise ConfigError(f"optimization.graph.level {level} is not one of {sorted(GRAPH_LEVELS)}")
        choice = choose_providers(self.options.providers, ort.get_available_providers(), allow_gpu=self.options.allow_gpu)
        if choice.skipped:
            self._log_skipped(choice.skipped, choice.providers,
                              "the instance group is KIND_CPU" if not self.options.allow_gpu else "not in this onnxruntime build")
        choice, device_ids = self._place(choice)
        plans = plan_sessions(choice.providers, device_ids, self.options.provider_options)
        opts = self._session_options(ort, len(device_ids))
        session = self._create(ort, opts, choice.providers, plans[0])
        actual = tuple(session.get_providers())
        if plans[0].device_id is not None and actual == (CPU_PROVIDER,):
            # A GPU build without a usable GPU: onnxruntime fell back to the CPU (and said so). One CPU
            # session serves the instances the CPU would (not one per GPU named, nor per visible GPU).
            instances = cpu_instances(self.options.groups)
            plans = plan_sessions(actual, (0,) * instances)
            log.warning("%s: the GPU providers did not start; one CPU session serves all %d instances",
                        self.model_path, instances)
            if self._threads(instances) != self._threads(len(device_ids)):
                # Its threads were sized for the GPUs' instances: made again, so instances x threads fits the cores.
                session = self._create(ort, self._session_options(ort, instances), actual, plans[0])
        sessions = [session] + [self._create(ort, opts, choice.providers, plan) for plan in plans[1:]]
        self.provider_choice = ProviderChoice(actual, choice.skipped)
        self.inputs = session_signature(session.get_inputs())
        self.outputs = session_signature(session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = frozenset(i.name for i in self.inputs if i.dtype == object)
        self._string_outputs = frozenset(o.name for o in self.outputs if o.dtype == object)
        self.plans = plans
        self._capacity = [plan.instances for plan in plans]
        self._busy = [0] * len(plans)
        self._sessions = sessions
        self._executor = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix="ort")

    def _place(self, choice: ProviderChoice) -> tuple[ProviderChoice, tuple[int, ...]]:
        """The providers and the device of each instance (kernels/placement.py); on the CPU only their number counts.

        The visible GPUs are counted only for a GPU provider serving a group that lists none; with none
        visible the GPU providers could not start, so the CPU serves, as on a build without them.
        """
        groups = self.options.groups
        if not groups:
            raise ValueError("a kernel needs at least one instance group")
        if all(p == CPU_PROVIDER for p in choice.providers):
            return choice, (0,) * cpu_instances(groups)
        visible = 1
        if any(not group.gpus for group in groups):
            found = self._find_gpus()
            if found.count == 0:
                unused = tuple(short for short, name in SHORT_TO_ORT.items() if name in choice.providers and name != CPU_PROVIDER)
                self._log_skipped(unused, (CPU_PROVIDER,), f"no GPU is visible: {found.source}")
                return ProviderChoice((CPU_PROVIDER,), choice.skipped + unused), (0,) * cpu_instances(groups)
            visible = found.count
        return choice, gpu_instance_devices(groups, visible)

    def _log_skipped(self, skipped: Sequence[str], providers: Sequence[str], reason: str) -> None:
        # The default chain tries GPUs where present; only a chain the config asked for warns.
        log.log(logging.WARNING if self.options.providers else logging.INFO,
                "%s: execution providers %s are not used (%s); using %s",
                self.model_path, ", ".join(skipped), reason, ", ".join(providers))

    def _threads(self, instances: int) -> int:
        return self.options.intra_op_threads or default_intra_op_threads(instances)

    def _session_options(self, ort: Any, instances: int) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads(instances)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = self.options.graph_optimization_level
        opts.graph_optimization_level = ort.GraphOptimizationLevel(GRAPH_LEVELS[0 if level is None else level])
        # Spinning worker threads would steal the cores the event loop needs to
        # decode the next requests; the server's batches keep them busy instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in self.options.extra_session_config.items():
            opts.add_session_config_entry(key, value)
        return opts

    def _create(self, ort: Any, opts: Any, providers: Sequence[str], plan: SessionPlan) -> Any:
        try:
            return ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=list(providers),
                provider_options=[dict(o) for o in plan.provider_options],
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            where = f" on GPU {plan.device_id}" if plan.device_id is not None else ""
            raise ConfigError(f"cannot load {self.model_path}{where}: {exc}") from exc

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a session once on already-merged inputs; all outputs by name."""
        sessions = self._sessions
        if not sessions:
            raise BackendError(f"{self.model_path} is not loaded")
        if len(sessions) == 1:
            return self._run_on(sessions[0], inputs)
        with self._lock:  # the session with the fewest runs in flight for its instances
            index = min(range(len(sessions)), key=lambda i: self._busy[i] / self._capacity[i])
            self._busy[index] += 1
        try:
            return self._run_on(sessions[index], inputs)
        finally:
            with self._lock:
                self._busy[index] -= 1

    def warm_up(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Run every session once (each GPU's session initialises lazily on its first run)."""
        for session in self._sessions:
            self._run_on(session, inputs)

    def _run_on(self, session: object, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = dict(inputs)
        for name in self._string_inputs & feeds.keys():
            feeds[name] = _bytes_to_str(name, feeds[name])
        try:
            results = session.run(self._output_names, feeds, self._run_options)  # type: ignore[attr-defined]
        except Exception as exc:
            text = str(exc)
            if "INVALID_ARGUMENT" in text or "Invalid rank" in text or "Got invalid dimensions" in text:
                raise InvalidInput(f"the model rejected the input: {text}") from exc
            raise BackendError(f"onnxruntime failed to run {self.model_path.name}: {text}") from exc
        out = dict(zip(self._output_names, results))
        for name in self._string_outputs:
            out[name] = _str_to_bytes(out[name])
        return out

    def run_batch(self, requests: Sequence[Mapping[str, np.ndarray]]) -> BatchResult:
        """Merge requests along dimension 0, run once, split the outputs back per request."""
        t0 = time.perf_counter_ns()
        if len(requests) == 1:
            merged = requests[0]
            bounds = None
        else:
            names = list(requests[0])
            first = names[0]
            bounds = []
            end = 0
            for r in requests:
                start, end = end, end + len(r[first])
                bounds.append((start, end))
            merged = {name: np.concatenate([r[name] for r in requests]) for name in names}
        t1 = time.perf_counter_ns()
        outputs = self.run(merged)
        t2 = time.perf_counter_ns()
        if bounds is None:
            per_request = [outputs]
        else:
            # Views, not copies: basic slicing is several times cheaper than np.split.
            items = list(outputs.items())
            per_request = [{name: value[start:end] for name, value in items} for start, end in bounds]
        t3 = time.perf_counter_ns()
        return BatchResult(per_request, t1 - t0, t2 - t1, t3 - t2, t3)

    def terminate(self) -> None:
        """End the runs in progress (onnxruntime stops them at its next check) and refuse later ones."""
        if self._run_options is not None:
            self._run_options.terminate = True

    def close(self) -> None:
        """Release the sessions and threads; runs already submitted finish first (see ``terminate``)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._sessions = []
