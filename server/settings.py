"""Server settings: typed, validated, read once (from the command line) by the CLI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from model_store.remote import MirrorConfig
from ops.logs import LOG_FORMATS
from ops.histograms import MetricsConfig
from server.dataplane import ControlMode
from server.grpc_options import GrpcKeepalive
from server.restrictions import Restriction, restrictions_by_category
from server.tls import TlsConfig

TRACE_EXPORTERS = ("otlp", "console")
EXAMPLE_REPOSITORY = Path(__file__).resolve().parents[1] / "model_store" / "examples" / "repository"


@dataclass(frozen=True)
class FleetSettings:
    """Fleet mode (``--redis-url``): rollouts, the shared response cache and rate limits through one Redis."""

    redis_url: str
    replica_id: str  # default (CLI): hostname-pid
    advertise_address: str = ""  # host[:port] for this replica's gRPC; "": --host (or the hostname), the gRPC port
    redis_timeout_s: float = 0.25  # socket timeout of each Redis command: past it Redis counts as down
    heartbeat_interval_s: float = 1.0  # actual state published this often, with a TTL of 3 intervals
    reconcile_interval_s: float = 10.0  # full reconcile of the desired state, beside change events
    cache_local_bytes: int = 64 * 1024 * 1024  # the response cache's in-process tier
    # With --grpc-use-ssl, peers (sequence forwarding) are called over TLS with the gRPC listener's files,
    # their certificates checked for this name ("": the advertised address's host).
    peer_tls_name: str = ""

    def __post_init__(self) -> None:
        if "://" not in self.redis_url:
            raise ValueError(f"--redis-url must be a URL such as redis://host:6379/0, got {self.redis_url!r}")
        if not self.replica_id or any(c.isspace() for c in self.replica_id):
            raise ValueError(f"--replica-id must be a non-empty word, got {self.replica_id!r}")
        for flag, seconds in (("--redis-timeout", self.redis_timeout_s),
                              ("--fleet-heartbeat-secs", self.heartbeat_interval_s),
                              ("--fleet-reconcile-secs", self.reconcile_interval_s)):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{flag} must be a finite number of seconds > 0, got {seconds}")
        if self.cache_local_bytes < 0:
            raise ValueError(f"--response-cache-local-bytes must be >= 0, got {self.cache_local_bytes}")

    @property
    def heartbeat_ttl_s(self) -> float:
        return 3 * self.heartbeat_interval_s


@dataclass(frozen=True)
class Settings:
    model_repository: Path = EXAMPLE_REPOSITORY  # the local folder read; a remote repository's mirror
    remote_repository: MirrorConfig | None = None  # s3:// or http(s)://, mirrored into model_repository
    host: str = "0.0.0.0"
    # Triton's --grpc-address, --http-address, --metrics-address ("": --host) and --allow-grpc/-http/-metrics
    grpc_address: str = ""
    http_address: str = ""
    metrics_address: str = ""
    allow_grpc: bool = True
    allow_http: bool = True
    allow_metrics: bool = True
    grpc_port: int = 8001  # Triton's conventions: HTTP 8000, gRPC 8001, metrics 8002
    http_port: int = 8000
    metrics_port: int = 8002
    model_control_mode: ControlMode = ControlMode.NONE
    load_models: tuple[str, ...] = ()  # explicit mode: models to load at start-up
    poll_interval_s: float = 15.0
    max_queue_size: int = 1024  # per model version, when its config sets none
    drain_timeout_s: float = 30.0  # shutdown: how long in-flight requests may take to finish
    # Close each gRPC connection after this long (0: never), so round-robin clients spread onto
    # replicas added by a scale-out instead of staying pinned to the old ones.
    grpc_max_connection_age_s: float = 0.0
    # HTTP/2 streams (calls) one gRPC connection may have open at once; the client queues the rest.
    # Each open stream costs the server about 25 KB, so without a cap one connection holding idle
    # streams grew it without bound (20,000 streams: 370 MB).
    grpc_max_concurrent_streams: int = 1024
    grpc_keepalive: GrpcKeepalive = field(default_factory=GrpcKeepalive)  # server/grpc_options.py
    grpc_response_compression: str = "none"  # a COMPRESSION_LEVELS name (server/grpc_options.py)
    max_message_bytes: int = 64 * 1024 * 1024
    http_max_body_bytes: int = 64 * 1024 * 1024  # REST request bodies; larger ones get 413
    # A large or chunked REST body that stops arriving for this long is answered 408, its bytes released.
    http_body_idle_timeout_s: float = 30.0
    shutdown_delay_s: float = 0.0  # shutdown: serve on, not ready, so load balancers stop routing here first
    strict_readiness: bool = False  # ready only while every model serves (server/readiness.py says why not default)
    log_format: str = "text"  # "json" adds one structured line per inference request
    trace: bool = False  # OpenTelemetry spans per inference request (the [tracing] extra)
    trace_exporter: str = "otlp"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fleet: FleetSettings | None = None  # None: standalone, no Redis
    grpc_tls: TlsConfig | None = None  # None: plain gRPC (server/tls.py)
    http_tls: TlsConfig | None = None  # None: plain HTTP for REST (the metrics port is always plain)
    tls_reload_interval_s: float = 10.0  # REST checks its certificate files this often (gRPC at each connection)
    # Triton's --grpc-restricted-protocol and --http-restricted-api groups (server/restrictions.py)
    grpc_restrictions: tuple[Restriction, ...] = ()
    http_restrictions: tuple[Restriction, ...] = ()

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be in 0..65535, got {port}")
        # Durations must be finite: NaN passes every comparison and inf never ends (a shutdown that
        # never exits, a poller that dies, an overflowing gRPC option).
        for flag, seconds, zero_ok in (("--repository-poll-secs", self.poll_interval_s, False),
                                       ("--drain-timeout", self.drain_timeout_s, True),
                                       ("--grpc-max-connection-age", self.grpc_max_connection_age_s, True),
                                       ("--shutdown-delay", self.shutdown_delay_s, True),
                                       ("--http-body-idle-timeout", self.http_body_idle_timeout_s, False),
                                       ("--tls-reload-secs", self.tls_reload_interval_s, False)):
            if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
                raise ValueError(f"{flag} must be a finite number of seconds {'>= 0' if zero_ok else '> 0'}, "
                                 f"got {seconds}")
        if self.max_queue_size < 1:
            raise ValueError(f"--max-queue-size must be >= 1, got {self.max_queue_size}")
        if self.grpc_max_concurrent_streams < 1:
            raise ValueError(f"--grpc-max-concurrent-streams must be >= 1, got {self.grpc_max_concurrent_streams}")
        if self.http_max_body_bytes < 1:
            raise ValueError(f"--http-max-body-bytes must be >= 1, got {self.http_max_body_bytes}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.trace_exporter not in TRACE_EXPORTERS:
            raise ValueError(f"trace exporter must be one of {', '.join(TRACE_EXPORTERS)}, got {self.trace_exporter!r}")
        if self.remote_repository is not None and self.model_repository != self.remote_repository.root:
            raise ValueError("with a remote repository, model_repository must be its mirror's root")
        _ = self.grpc_restricted, self.http_restricted  # each raises ValueError for a bad group
        if not (self.allow_grpc or self.allow_http):
            raise ValueError("--allow-grpc false and --allow-http false: nothing would serve requests")
        if self.fleet is not None and not self.allow_grpc:
            raise ValueError("fleet mode (--redis-url) needs gRPC: the replicas forward requests to each other over "
                             "it; drop --allow-grpc false")
        if self.load_models and self.model_control_mode is not ControlMode.EXPLICIT:
            raise ValueError("--load-model is only meaningful with --model-control-mode explicit")

    @property
    def grpc_restricted(self) -> dict[str, Restriction]:
        """The restricted gRPC APIs by category (server/restrictions.py); empty: none."""
        return restrictions_by_category(self.grpc_restrictions, "--grpc-restricted-protocol")

    @property
    def http_restricted(self) -> dict[str, Restriction]:
        return restrictions_by_category(self.http_restrictions, "--http-restricted-api")

    def address(self, listener: str) -> str:
        """Where ``listener`` ("grpc", "http", "metrics") binds: its own address, else ``host``."""
        return getattr(self, f"{listener}_address") or self.host
