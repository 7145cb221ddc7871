"""Ensembles: Triton's ``platform: "ensemble"``, a pipeline of other models run as one model.

An ensemble's config.pbtxt names its inputs and outputs (data_type and dims: there is no model file
to complete them from) and, in ``ensemble_scheduling``, its steps: each runs one model of the
repository (``model_name``, ``model_version`` -1 for the latest), reading ensemble tensors into the
model's inputs (``input_map``: the model's input -> the ensemble tensor) and writing the model's
outputs as ensemble tensors (``output_map``: the model's output -> the ensemble tensor). Each version
folder of the ensemble is a version (it holds no file).

``build_config`` checks what the config alone can tell, each error naming the field: every tensor a
step reads is an ensemble input or written by exactly one step, every ensemble input is read and
every output written, no step writes an ensemble input, and the steps form no cycle (they run as
soon as what they read exists, whatever their order in the file). ``check_steps`` checks the steps against
the composing models' configs once those serve: the mapped names exist, every input the model needs
is mapped, datatypes and dims agree along each tensor, and batching fits (an ensemble that batches
needs composing models that batch at least as many rows). The same checks run again on every request,
in each composing model's own validation, so a composing model reloaded with another config fails
requests with its own message rather than wrong results.

Pure functions over the parsed message and configs; imports model_store.config, .complete, .datatypes,
.defaults_only, .options, .repository's name check and the generated config messages; must not import
server, batching, kernels or grpc.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from model_store import defaults_only, options
from model_store.complete import listed_field
from model_store.config import (
    ENSEMBLE_PLATFORM,
    PARAMETERS,
    Ensemble,
    EnsembleStep,
    ModelConfig,
    TensorSpec,
)
from model_store.datatypes import BY_CONFIG_NAME
from model_store.options import Where
from model_store.protos import model_config_pb2 as pb

# Fields a model's config has that mean nothing for an ensemble, which runs no kernel of its own. The fields
# Triton writes at their defaults into every complete config (defaults_only.py) load, as for any model.
_NOT_FOR_ENSEMBLES = {
    "instance_group": "its composing models have the instances",
    "optimization.execution_accelerators": "its composing models are the ones run",
    "optimization.graph": "its composing models are the ones run",
    "model_warmup": "warm up its composing models instead",
    "default_model_filename": "an ensemble's version folders hold no model file",
}


def is_ensemble(message: pb.ModelConfig | None) -> bool:
    return message is not None and message.platform == ENSEMBLE_PLATFORM


def build_config(model_name: str, msg: pb.ModelConfig, source: str) -> ModelConfig:
    """The checked configuration of ensemble ``model_name`` from its parsed config.pbtxt; raises ``ConfigError``."""
    where = Where(model_name, source)
    if msg.name and msg.name != model_name:
        raise where.error("name", f'is "{msg.name}", but the model folder is "{model_name}"; make them equal or '
                          "leave name out")
    if msg.backend:
        raise where.error("backend", f'is "{msg.backend}", but an ensemble runs other models and has no backend; '
                          f'remove it (platform "{ENSEMBLE_PLATFORM}" is enough)')
    defaults_only.check(msg, where)
    for name, why in _NOT_FOR_ENSEMBLES.items():
        if _stated(msg, name):
            raise where.error(name, f"is set, but an ensemble takes none: {why}; remove it")
    if msg.response_cache.enable:
        raise where.error("response_cache.enable", "is true, but fleetserve caches the answers of models, not of "
                          "ensembles: enable it in the composing models' configs instead")
    if msg.model_transaction_policy.decoupled:
        raise where.error("model_transaction_policy.decoupled", "is true, which fleetserve does not support: each "
                          "request gets exactly one response; remove it")
    read = sorted(key for key in msg.parameters if key in PARAMETERS)
    if read:
        raise where.error(f"parameters.{read[0]}", "configures a model's kernel or batcher, and an ensemble has "
                          "neither: set it on the composing models")
    if msg.max_batch_size < 0:
        raise where.error("max_batch_size", f"must be 0 (no batching) or a positive batch size, not {msg.max_batch_size}")
    inputs = _tensors(msg.input, "input", where)
    outputs = _tensors(msg.output, "output", where)
    steps = _steps(model_name, msg.ensemble_scheduling, where)
    _check_flow(steps, {s.name for s in inputs}, {s.name for s in outputs}, where)
    return ModelConfig(
        name=model_name,
        max_batch_size=msg.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        dynamic_batching=None,
        version_policy=options.version_policy(msg, where),
        parameters=options.parameters(msg, where),
        ensemble=Ensemble(tuple(steps)),
    )


def _stated(msg: pb.ModelConfig, path: str) -> bool:
    """Whether the field at ``path`` (dotted) holds anything."""
    holder: Any = msg
    *parents, name = path.split(".")
    for parent in parents:
        holder = getattr(holder, parent)
    value = getattr(holder, name)
    if isinstance(value, str):
        return bool(value)
    if hasattr(value, "ListFields"):
        return holder.HasField(name)
    return len(value) > 0


def _tensors(listed: Collection[pb.ModelInput | pb.ModelOutput], kind: str, where: Where) -> tuple[TensorSpec, ...]:
    if not listed:
        raise where.error(kind, f"lists none; an ensemble states its {kind}s (name, data_type, dims): there is no "
                          "model file to read them from")
    specs: list[TensorSpec] = []
    for index, entry in enumerate(listed):
        field = listed_field(entry, index, kind, specs, where)
        if entry.data_type == pb.TYPE_INVALID:
            raise where.error(f"{field}.data_type", "is needed: an ensemble's tensors have no model file to take "
                              "it from")
        try:
            datatype = BY_CONFIG_NAME[pb.DataType.Name(entry.data_type)]
        except (ValueError, KeyError):
            raise where.error(f"{field}.data_type", f"{entry.data_type} is not a known data type") from None
        dims = tuple(entry.dims)
        if not dims:
            raise where.error(f"{field}.dims", "are needed: an ensemble's tensors have no model file to take them from")
        if any(d < 1 and d != -1 for d in dims):
            raise where.error(f"{field}.dims", f"are {list(dims)}; each dim is a size >= 1, or -1 for a variable size")
        if entry.HasField("reshape"):
            raise where.error(f"{field}.reshape", "is not supported on an ensemble's tensors; reshape in the "
                              "composing model's config")
        if isinstance(entry, pb.ModelInput):
            if entry.optional:
                raise where.error(f"{field}.optional", "is not supported on an ensemble's inputs; remove it")
            layout = pb.ModelInput.Format.Name(entry.format)
            specs.append(TensorSpec(entry.name, datatype, dims, format=layout))
        else:
            specs.append(TensorSpec(entry.name, datatype, dims, label_filename=entry.label_filename))
    return tuple(specs)


def _steps(model_name: str, scheduling: pb.ModelEnsembling, where: Where) -> list[EnsembleStep]:
    if not scheduling.step:
        raise where.error("ensemble_scheduling.step", "lists none; an ensemble runs at least one step (a model_name "
                          "with its input_map and output_map)")
    from model_store.repository import name_problem  # the repository's rule for a model's name

    steps = []
    for index, step in enumerate(scheduling.step):
        field = f"ensemble_scheduling.step[{index}]"
        if not step.model_name:
            raise where.error(f"{field}.model_name", "is empty; name the model this step runs")
        problem = name_problem(step.model_name)
        if problem:
            raise where.error(f"{field}.model_name", f"{step.model_name!r} is not a model name: {problem}")
        if step.model_name == model_name:
            raise where.error(f"{field}.model_name", f'is "{model_name}", the ensemble itself; a step runs another '
                              "model")
        if step.model_version < -1 or step.model_version == 0:
            raise where.error(f"{field}.model_version", f"is {step.model_version}; give a version number >= 1, or -1 "
                              "for the latest version that serves")
        if step.model_namespace:
            raise where.error(f"{field}.model_namespace", "is not supported: fleetserve serves one repository, one "
                              "namespace; remove it")
        for kind, mapping in (("input_map", step.input_map), ("output_map", step.output_map)):
            if not mapping:
                raise where.error(f"{field}.{kind}", "is empty; map the model's "
                                  f"{'inputs from' if kind == 'input_map' else 'outputs to'} ensemble tensors")
            for key, value in mapping.items():
                if not key or not value:
                    raise where.error(f"{field}.{kind}", f"maps {key!r} to {value!r}; both names are needed")
        written = list(step.output_map.values())
        twice = next((t for i, t in enumerate(written) if t in written[:i]), None)
        if twice is not None:
            raise where.error(f"{field}.output_map", f"writes ensemble tensor '{twice}' from two outputs; each tensor "
                              "is written once")
        steps.append(EnsembleStep(step.model_name, step.model_version, tuple(sorted(step.input_map.items())),
                                  tuple(sorted(step.output_map.items()))))
    return steps


def _check_flow(steps: list[EnsembleStep], inputs: set[str], outputs: set[str], where: Where) -> None:
    """Check the tensors' flow: each read tensor written once (or an input), no cycle."""
    writer: dict[str, int] = {}
    for index, step in enumerate(steps):
        for _, tensor in step.output_map:
            field = f"ensemble_scheduling.step[{index}].output_map"
            if tensor in inputs:
                raise where.error(field, f"writes '{tensor}', which is an input of the ensemble; write another tensor")
            if tensor in writer:
                raise where.error(field, f"writes '{tensor}', which step[{writer[tensor]}] writes too; each tensor is "
                                  "written by one step")
            writer[tensor] = index
    known = sorted(inputs | set(writer))
    read: set[str] = set()
    for index, step in enumerate(steps):
        for _, tensor in step.input_map:
            if tensor not in inputs and tensor not in writer:
                raise where.error(f"ensemble_scheduling.step[{index}].input_map", f"reads '{tensor}', which is neither "
                                  f"an input of the ensemble nor written by a step; tensors: {', '.join(known)}")
            read.add(tensor)
    for name in sorted(inputs - read):
        raise where.error(f'input "{name}"', "is read by no step; map it in a step's input_map or remove it")
    for name in sorted(outputs - set(writer)):
        raise where.error(f'output "{name}"', "is written by no step; map a step's output to it in its output_map")
    available = set(inputs)
    waiting = list(range(len(steps)))
    while waiting:
        ready = [i for i in waiting if all(t in available for _, t in steps[i].input_map)]
        if not ready:
            cycle = ", ".join(f"step[{i}] (model '{steps[i].model_name}')" for i in waiting)
            raise where.error("ensemble_scheduling.step", f"{cycle} read from each other in a cycle; each step may "
                              "read only ensemble inputs and what earlier steps write")
        for i in ready:
            available.update(t for _, t in steps[i].output_map)
            waiting.remove(i)


def check_steps(config: ModelConfig, composing: Callable[[EnsembleStep], ModelConfig], source: str) -> None:
    """Check ensemble ``config``'s steps against the configs of the composing versions they run (``composing``,
    which raises ``ServingError`` for a version that does not serve); raises ``ConfigError``."""
    assert config.ensemble is not None
    where = Where(config.name, source)
    batching = config.max_batch_size > 0
    # Each tensor's datatype and dims as the ensemble sees them (without the batch dimension when it batches).
    tensors = {spec.name: (spec.datatype.name, spec.dims, f"ensemble input '{spec.name}'") for spec in config.inputs}
    for step in config.ensemble.run_order():
        model = composing(step)
        field = f"ensemble_scheduling.step (model '{step.model_name}')"
        if batching and model.max_batch_size == 0:
            raise where.error("max_batch_size", f"is {config.max_batch_size}, but model '{step.model_name}' does not "
                              "batch (max_batch_size 0); set the ensemble's max_batch_size to 0")
        if batching and model.max_batch_size < config.max_batch_size:
            raise where.error("max_batch_size", f"is {config.max_batch_size}, more than model '{step.model_name}' "
                              f"takes ({model.max_batch_size}); use at most {model.max_batch_size}")
        # An ensemble that does not batch hands a batching model tensors whose first dim is the batch.
        leading = not batching and model.max_batch_size > 0
        mapped = dict(step.input_map)
        for name, tensor in step.input_map:
            spec = model.input(name)
            if spec is None:
                raise where.error(f"{field}.input_map", f"maps '{name}', which model '{step.model_name}' does not "
                                  f"take; its inputs: {', '.join(s.name for s in model.inputs)}")
            datatype, dims, what = tensors[tensor]
            expected = ((-1,) + spec.dims) if leading else spec.dims
            if datatype != spec.datatype.name or not _fits(dims, expected):
                raise where.error(f"{field}.input_map", f"feeds {what} ({datatype} {list(dims)}) to input '{name}', "
                                  f"which takes {spec.datatype.name} {list(expected)}")
        missing = [s.name for s in model.inputs if s.name not in mapped and not s.optional]
        if missing:
            raise where.error(f"{field}.input_map", f"leaves out the model's input(s) {', '.join(missing)}; map every "
                              "input the model needs")
        for name, tensor in step.output_map:
            out = next((s for s in model.outputs if s.name == name), None)
            if out is None:
                raise where.error(f"{field}.output_map", f"maps '{name}', which model '{step.model_name}' does not "
                                  f"give; its outputs: {', '.join(s.name for s in model.outputs)}")
            dims = ((-1,) + out.dims) if leading else out.dims
            tensors[tensor] = (out.datatype.name, dims, f"'{tensor}' (output '{name}' of model '{step.model_name}')")
    for spec in config.outputs:
        datatype, dims, what = tensors[spec.name]
        if datatype != spec.datatype.name or not _fits(dims, spec.dims):
            raise where.error(f'output "{spec.name}"', f"is {spec.datatype.name} {list(spec.dims)}, but it is {what}: "
                              f"{datatype} {list(dims)}")


def _fits(dims: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(dims) == len(expected) and all(a == b or -1 in (a, b) for a, b in zip(dims, expected))

