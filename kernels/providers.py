"""Choosing onnxruntime execution providers: what was asked for vs what is installed.

A pure function so the fallback rules are tested without a GPU. Provider names
in configs are short ("tensorrt", "cuda", "cpu"); onnxruntime's are long.
"""

from __future__ import annotations

from dataclasses import dataclass

SHORT_TO_ORT = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_CHAIN = ("tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class ProviderChoice:
    """The providers to create a session with, and why any were left out."""

    providers: tuple[str, ...]  # onnxruntime provider names, in preference order, CPU last
    skipped: tuple[str, ...]  # requested short names that this onnxruntime build does not offer

    @property
    def fell_back_to_cpu(self) -> bool:
        return self.providers == ("CPUExecutionProvider",) and any(s != "cpu" for s in self.skipped)


def choose_providers(requested: tuple[str, ...], available: list[str], *, allow_gpu: bool = True) -> ProviderChoice:
    """Filter the requested chain (default: TensorRT, CUDA, CPU) by what is available.

    CPU is always appended last so that a session can be created on any machine;
    with ``allow_gpu`` false (an instance group of KIND_CPU) GPU providers are skipped.
    Unknown names raise ValueError naming the known ones.
    """
    chain = requested or DEFAULT_CHAIN
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
