"""Triton fields that mean nothing for an ONNX model here: accepted at Triton's defaults, refused otherwise.

Triton writes these into every complete configuration (``GET /v2/models/m/config``; its onnxruntime
backend's auto-complete), and users copy them into config.pbtxt: ``runtime: ""``,
``optimization { priority: PRIORITY_DEFAULT input_pinned_memory { enable: true } ... }``, an instance
group's ``passive: false`` and ``host_policy: ""``, an input's ``is_shape_tensor: false`` and
``allow_ragged_batch: false``, ``batch_input: []``. At those values they change nothing, in Triton or
here, so they load. Any other value asks for something fleetserve does not do (or that Triton does only
for TensorRT plans), so it is refused with the field and what to do, never loaded and ignored.

The exception is pinned memory: ``input_pinned_memory``/``output_pinned_memory`` choose whether Triton
stages host-GPU copies through pinned buffers, which changes only the speed of a copy. fleetserve hands
host arrays to onnxruntime, which makes its own copies, so there is no staging buffer to pin or not:
either value loads and has no effect.

Pure functions over the parsed message; imports model_store.options (``Where``) and the generated
config messages only; must not import server, batching, kernels or grpc.
"""

from __future__ import annotations

from collections.abc import Mapping

from model_store.options import Where
from model_store.protos import model_config_pb2 as pb

# The runtime values that name the onnxruntime backend: none (the backend's default) or its library.
ONNXRUNTIME_RUNTIMES = ("", "libtriton_onnxruntime.so")
_TRT_ONLY = "a setting only Triton's TensorRT backend acts on (its onnxruntime backend does not, nor does fleetserve)"


def check(msg: pb.ModelConfig, where: Where) -> None:
    """Refuse a Triton field of this module's kind that is not at its default; raises ``ConfigError``."""
    _model(msg, where)
    _optimization(msg.optimization, where)
    for index, group in enumerate(msg.instance_group):
        _instance_group(group, f"instance_group[{index}]", where)
    for kind, tensors in (("input", msg.input), ("output", msg.output)):
        for index, tensor in enumerate(tensors):
            _tensor(tensor, f'{kind} "{tensor.name}"' if tensor.name else f"{kind}[{index}]", where)


def _model(msg: pb.ModelConfig, where: Where) -> None:
    if msg.runtime not in ONNXRUNTIME_RUNTIMES:
        raise where.error("runtime", f'is "{msg.runtime}"; fleetserve runs ONNX models with onnxruntime only: '
                          'remove runtime (or give "libtriton_onnxruntime.so")')
    if msg.batch_input:
        raise where.error("batch_input", "is not supported by fleetserve: it adds no inputs computed from the "
                          "batch; remove it and give the model only the inputs requests carry")
    if msg.batch_output:
        raise where.error("batch_output", "is not supported by fleetserve: each output is split along the batch "
                          "dimension; remove it")
    if _entries(msg.cc_model_filenames):
        raise where.error("cc_model_filenames", "is not supported by fleetserve: every GPU loads the same file, "
                          "default_model_filename (model.onnx unless set); remove it")
    if _entries(msg.metric_tags):
        raise where.error("metric_tags", "is not supported by fleetserve: its metrics carry model and version "
                          "labels only; remove it")


def _optimization(opt: pb.ModelOptimizationPolicy, where: Where) -> None:
    if opt.priority != pb.ModelOptimizationPolicy.PRIORITY_DEFAULT:
        try:
            name = pb.ModelOptimizationPolicy.ModelPriority.Name(opt.priority)
        except ValueError:
            name = str(opt.priority)
        raise where.error("optimization.priority", f"is {name}, {_TRT_ONLY}; remove it or use PRIORITY_DEFAULT "
                          "(request priorities: dynamic_batching priority_levels)")
    for field in ("graphs", "busy_wait_events", "output_copy_stream"):
        if getattr(opt.cuda, field):
            raise where.error(f"optimization.cuda.{field}", f"is true, {_TRT_ONLY}; remove it")
    if opt.gather_kernel_buffer_threshold:
        raise where.error("optimization.gather_kernel_buffer_threshold",
                          f"is {opt.gather_kernel_buffer_threshold}, {_TRT_ONLY}; remove it or give 0")
    if opt.eager_batching:
        raise where.error("optimization.eager_batching", f"is true, {_TRT_ONLY}; remove it or set it false")


def _instance_group(group: pb.ModelInstanceGroup, field: str, where: Where) -> None:
    if group.passive:
        raise where.error(f"{field}.passive", "is true, but fleetserve sends requests to every instance it "
                          "loads; remove it or set it false")
    if group.host_policy:
        raise where.error(f"{field}.host_policy", f'is "{group.host_policy}", but fleetserve has no host '
                          "policies (Triton's --host-policy); remove it")
    if group.profile:
        raise where.error(f"{field}.profile", f"is {list(group.profile)}, which names TensorRT plan "
                          "optimization profiles; an ONNX model has none (Triton refuses it too): remove it")
    if group.secondary_devices:
        raise where.error(f"{field}.secondary_devices", f"lists NVDLA cores, {_TRT_ONLY}; remove it")


def _tensor(tensor: pb.ModelInput | pb.ModelOutput, field: str, where: Where) -> None:
    if tensor.is_shape_tensor:
        raise where.error(f"{field}.is_shape_tensor", f"is true, {_TRT_ONLY}; remove it or set it false")
    if tensor.is_non_linear_format_io:
        raise where.error(f"{field}.is_non_linear_format_io", f"is true, {_TRT_ONLY}; remove it or set it false")
    if isinstance(tensor, pb.ModelInput) and tensor.allow_ragged_batch:
        raise where.error(f"{field}.allow_ragged_batch", "is true, but fleetserve merges into one batch only "
                          "requests whose shapes match (ragged batches need batch_input, which it does not "
                          "support); remove it or set it false")


def _entries(table: Mapping[str, str]) -> dict[str, str]:
    """A map's entries, less the empty one that ``cc_model_filenames {}`` writes in text format."""
    return {key: value for key, value in table.items() if key or value}
