"""Choosing onnxruntime execution providers, and their options: what was asked for vs what is installed.

Pure functions, so the fallback rules and the options are tested without a GPU. Provider names
in configs are short ("tensorrt", "cuda", "cpu"); onnxruntime's are long.

Accelerator parameters have the meaning Triton's onnxruntime backend gives them
(``optimization.execution_accelerators.gpu_execution_accelerator [{ name: "tensorrt"
parameters { key: "precision_mode" value: "FP16" } }]``): TensorRT's are Triton's
keys, each mapped to one TensorRT provider option of onnxruntime; CUDA's are the
CUDA provider's own options, passed on. Unlike Triton, which hands an unknown CUDA
key to onnxruntime (an error only where a GPU is present), every key and value is
checked here, so a config that would fail on a GPU machine fails on every machine.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Mapping

SHORT_TO_ORT = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_CHAIN = ("tensorrt", "cuda", "cpu")

_UINT = re.compile(r"[0-9]{1,19}")
_INT = re.compile(r"-?[0-9]{1,9}")
_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def _uint(value: str) -> str:
    if not _UINT.fullmatch(value) or int(value) >= 2**64:
        raise ValueError("a whole number of 0 or more")
    return value


def _int(value: str) -> str:
    if not _INT.fullmatch(value):
        raise ValueError("a whole number")
    return value


def _bool(value: str) -> str:
    if value.lower() in _TRUE:
        return "1"
    if value.lower() in _FALSE:
        return "0"
    raise ValueError('"1" or "0" ("true" or "false")')


def _text(value: str) -> str:
    if not value or "\0" in value:
        raise ValueError("a non-empty text")
    return value


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(" or ".join(f'"{c}"' for c in choices))
        return value

    return check


# Triton's TensorRT accelerator parameters: key -> (onnxruntime's TensorRT provider option, value check).
# ``precision_mode`` is handled apart: FP16, BF16 and INT8 each turn one option on; FP32 is the default.
_TENSORRT: dict[str, tuple[str, Callable[[str], str]]] = {
    "max_workspace_size_bytes": ("trt_max_workspace_size", _uint),
    "trt_max_partition_iterations": ("trt_max_partition_iterations", _int),
    "trt_min_subgraph_size": ("trt_min_subgraph_size", _int),
    "int8_calibration_table_name": ("trt_int8_calibration_table_name", _text),
    "int8_use_native_calibration_table": ("trt_int8_use_native_calibration_table", _bool),
    "trt_dla_enable": ("trt_dla_enable", _bool),
    "trt_dla_core": ("trt_dla_core", _int),
    "trt_engine_cache_enable": ("trt_engine_cache_enable", _bool),
    "trt_engine_cache_path": ("trt_engine_cache_path", _text),
    "trt_engine_cache_prefix": ("trt_engine_cache_prefix", _text),
    "trt_dump_subgraphs": ("trt_dump_subgraphs", _bool),
    "trt_force_sequential_engine_build": ("trt_force_sequential_engine_build", _bool),
    "trt_context_memory_sharing_enable": ("trt_context_memory_sharing_enable", _bool),
    "trt_layer_norm_fp32_fallback": ("trt_layer_norm_fp32_fallback", _bool),
    "trt_timing_cache_enable": ("trt_timing_cache_enable", _bool),
    "trt_timing_cache_path": ("trt_timing_cache_path", _text),
    "trt_force_timing_cache": ("trt_force_timing_cache", _bool),
    "trt_detailed_build_log": ("trt_detailed_build_log", _bool),
    "trt_build_heuristics_enable": ("trt_build_heuristics_enable", _bool),
    "trt_sparsity_enable": ("trt_sparsity_enable", _bool),
    "trt_builder_optimization_level": ("trt_builder_optimization_level", _int),
    "trt_auxiliary_streams": ("trt_auxiliary_streams", _int),
    "trt_tactic_sources": ("trt_tactic_sources", _text),
    "trt_extra_plugin_lib_paths": ("trt_extra_plugin_lib_paths", _text),
    "trt_profile_min_shapes": ("trt_profile_min_shapes", _text),
    "trt_profile_max_shapes": ("trt_profile_max_shapes", _text),
    "trt_profile_opt_shapes": ("trt_profile_opt_shapes", _text),
    "trt_dump_ep_context_model": ("trt_dump_ep_context_model", _bool),
    "trt_ep_context_file_path": ("trt_ep_context_file_path", _text),
    "trt_ep_context_embed_mode": ("trt_ep_context_embed_mode", _int),
}
_PRECISIONS = {"FP32": None, "FP16": "trt_fp16_enable", "BF16": "trt_bf16_enable", "INT8": "trt_int8_enable"}

# onnxruntime's CUDA provider options that a config may set (device_id comes from the instance group).
_CUDA: dict[str, Callable[[str], str]] = {
    "gpu_mem_limit": _uint,
    "arena_extend_strategy": _one_of("kNextPowerOfTwo", "kSameAsRequested"),
    "cudnn_conv_algo_search": _one_of("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "do_copy_in_default_stream": _bool,
    "cudnn_conv_use_max_workspace": _bool,
    "cudnn_conv1d_pad_to_nc1d": _bool,
    "enable_skip_layer_norm_strict_mode": _bool,
    "use_tf32": _bool,
    "prefer_nhwc": _bool,
    "use_ep_level_unified_stream": _bool,
    "tunable_op_enable": _bool,
    "tunable_op_tuning_enable": _bool,
    "tunable_op_max_tuning_duration_ms": _int,
    "fuse_conv_bias": _bool,
    "sdpa_kernel": _int,
}

# Triton's deprecated way to set CUDA options, as model parameters: key -> (CUDA option, value check and mapping).
_NUMBERED = {
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
}
CUDA_MODEL_PARAMETERS = ("cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy", "do_copy_in_default_stream")


# Options onnxruntime offers that cannot work here: CUDA graphs replay one captured run, so they need every run to
# have the same input shapes at the same GPU addresses (IO binding); batches of varying size have neither.
_REFUSED = {
    "enable_cuda_graph": "CUDA graphs need every run to have the same shapes, bound to fixed GPU buffers, which "
                         "dynamic batches do not have; remove it",
    "trt_cuda_graph_enable": "CUDA graphs need every run to have the same shapes, bound to fixed GPU buffers, which "
                             "dynamic batches do not have; remove it",
}


class OptionError(ValueError):
    """A parameter an accelerator does not take, or a value it cannot have; ``key`` names the parameter."""

    def __init__(self, key: str, text: str) -> None:
        super().__init__(text)
        self.key = key


def accelerator_options(short: str, parameters: Mapping[str, str]) -> dict[str, str]:
    """onnxruntime provider options for the accelerator ``short`` ("tensorrt", "cuda", "cpu") from its
    parameters as a config writes them (Triton's meaning; module docstring). Raises ``OptionError``."""
    table = _TENSORRT if short == "tensorrt" else {key: (key, check) for key, check in _CUDA.items()}
    options: dict[str, str] = {}
    for key, value in parameters.items():
        if short not in ("tensorrt", "cuda"):
            raise OptionError(key, f"the {short} accelerator takes no parameters; remove them")
        if key == "device_id":
            raise OptionError(key, "is set by the instance group's gpus (each GPU gets its own session); remove it")
        if key in _REFUSED:
            raise OptionError(key, f"is not supported: {_REFUSED[key]}")
        if short == "tensorrt" and key == "precision_mode":
            if value not in _PRECISIONS:
                raise OptionError(key, f'is "{value}"; use "FP32", "FP16", "BF16" or "INT8"')
            option = _PRECISIONS[value]
            if option is not None:
                options[option] = "1"
            continue
        if key not in table:
            known = sorted([*table, "precision_mode"] if short == "tensorrt" else table)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise OptionError(key, f"is not a {short} accelerator parameter{hint}; known: {', '.join(known)}")
        option, check = table[key]
        try:
            options[option] = check(value)
        except ValueError as exc:
            raise OptionError(key, f'is "{value}"; give {exc}') from None
    return options


def cuda_model_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """CUDA provider options from Triton's deprecated model parameters (``parameters { key:
    "cudnn_conv_algo_search" value: { string_value: "1" } }``; numbers for the two enums, as Triton reads
    them). Raises ``OptionError``."""
    options: dict[str, str] = {}
    for key in CUDA_MODEL_PARAMETERS:
        if key not in parameters:
            continue
        value = parameters[key]
        names = _NUMBERED.get(key)
        if names is not None:
            if not value.isdigit() or int(value) >= len(names):
                choices = ", ".join(f"{i} ({n})" for i, n in enumerate(names))
                raise OptionError(key, f'is "{value}"; give {choices}')
            options[key] = names[int(value)]
            continue
        try:
            options[key] = _CUDA[key](value)
        except ValueError as exc:
            raise OptionError(key, f'is "{value}"; give {exc}') from None
    return options


@dataclass(frozen=True)
class ProviderChoice:
    """The providers to create a session with, and why any were left out."""

    providers: tuple[str, ...]  # onnxruntime provider names, in preference order, CPU last
    skipped: tuple[str, ...]  # requested short names that this onnxruntime build does not offer

    @property
    def fell_back_to_cpu(self) -> bool:
        return self.providers == ("CPUExecutionProvider",) and any(s != "cpu" for s in self.skipped)


def choose_providers(requested: tuple[str, ...], available: list[str], *, allow_gpu: bool = True) -> ProviderChoice:
    """Filter the requested chain (default: TensorRT, CUDA, CPU; CUDA follows a requested TensorRT) by what is
    available.

    CPU is always appended last so that a session can be created on any machine;
    with ``allow_gpu`` false (an instance group of KIND_CPU) GPU providers are skipped.
    Unknown names raise ValueError naming the known ones.
    """
    chain = requested or DEFAULT_CHAIN
    if "tensorrt" in chain and "cuda" not in chain:
        # As Triton's onnxruntime backend: CUDA runs what TensorRT cannot, so those nodes stay on the GPU.
        at = chain.index("tensorrt") + 1
        chain = (*chain[:at], "cuda", *chain[at:])
    chosen: list[str] = []
    skipped: list[str] = []
    for short in chain:
        ort_name = SHORT_TO_ORT.get(short)
        if ort_name is None:
            raise ValueError(f"unknown execution provider {short!r}; known: {', '.join(SHORT_TO_ORT)}")
        if (short != "cpu" and not allow_gpu) or ort_name not in available:
            skipped.append(short)
        elif ort_name not in chosen:
            chosen.append(ort_name)
    if "CPUExecutionProvider" in chosen:
        chosen.remove("CPUExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return ProviderChoice(tuple(chosen), tuple(s for s in skipped if s != "cpu"))
