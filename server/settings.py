"""Server settings: typed, validated, read once (from the command line) by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.dataplane import ControlMode

EXAMPLE_REPOSITORY = Path(__file__).resolve().parents[1] / "model_store" / "examples" / "repository"


@dataclass(frozen=True)
class Settings:
    model_repository: Path = EXAMPLE_REPOSITORY
    host: str = "0.0.0.0"
    grpc_port: int = 8001  # Triton's conventions: HTTP 8000, gRPC 8001, metrics 8002
    http_port: int = 8000
    metrics_port: int = 8002
    model_control_mode: ControlMode = ControlMode.NONE
    load_models: tuple[str, ...] = ()  # explicit mode: models to load at start-up
    poll_interval_s: float = 15.0
    max_queue_size: int = 1024  # per model version, when its config sets none
    drain_timeout_s: float = 30.0  # shutdown: how long in-flight requests may take to finish
    max_message_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name.replace('_', '-')} must be in 0..65535, got {port}")
        if self.poll_interval_s <= 0:
            raise ValueError(f"poll interval must be positive, got {self.poll_interval_s}")
        if self.max_queue_size < 1:
            raise ValueError(f"max queue size must be >= 1, got {self.max_queue_size}")
        if self.load_models and self.model_control_mode is not ControlMode.EXPLICIT:
            raise ValueError("--load-model is only meaningful with --model-control-mode explicit")
