"""Test helpers for kernels: onnxruntime sessions that behave as if their GPU providers started.

onnxruntime's CPU build (the test install) has no GPU provider, so a kernel that asks for CUDA gets
a CPU session and falls back. ``GpuSessions`` stands in for ``onnxruntime.InferenceSession``: it
records what each session was asked for (providers, their options, intra-op threads), creates a real
CPU session to run, and reports the providers asked for as the ones in use. Install it with
``monkeypatch.setattr(onnxruntime, "InferenceSession", GpuSessions())``, together with a stand-in for
``onnxruntime.get_available_providers`` that offers the GPU providers. ``GpuSessions(gpus_start=False)``
plays a GPU build on a machine where they do not start: each session reports the CPU alone, as
onnxruntime's own fallback does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@dataclass(frozen=True)
class SessionRequest:
    """What one session was created with."""

    providers: tuple[str, ...]
    provider_options: tuple[dict[str, str], ...]
    intra_op_threads: int


class _Started:
    """A real CPU session that says it runs on the providers it was asked for."""

    def __init__(self, session: Any, providers: Sequence[str]) -> None:
        self._session = session
        self._providers = list(providers)

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class GpuSessions:
    """Stands in for ``onnxruntime.InferenceSession``; ``created`` lists each session's ``SessionRequest``."""

    def __init__(self, gpus_start: bool = True) -> None:
        import onnxruntime

        self._real = onnxruntime.InferenceSession
        self._gpus_start = gpus_start
        self.created: list[SessionRequest] = []

    def __call__(self, path: str, sess_options: Any = None, providers: Sequence[str] = (),
                 provider_options: Sequence[dict[str, str]] = (), **kwargs: Any) -> _Started:
        self.created.append(SessionRequest(tuple(providers), tuple(dict(o) for o in provider_options),
                                           sess_options.intra_op_num_threads))
        session = self._real(path, sess_options=sess_options, providers=["CPUExecutionProvider"], **kwargs)
        return _Started(session, providers if self._gpus_start else ["CPUExecutionProvider"])
