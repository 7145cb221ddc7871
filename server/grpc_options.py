"""The gRPC server, built from Settings (``build_server``, ``bind``): its channel options (message limits, streams
per connection, connection age, compression, and keepalive: Triton's ``--grpc-keepalive-*`` and ``--grpc-http2-*``
flags, with gRPC's and Triton's defaults), the restricted APIs' interceptor, and its listening port.

Keepalive matters where connections cross load balancers and NATs that drop idle ones: the server pings
idle clients every ``time_ms`` and closes a connection whose ping is not answered within ``timeout_ms``.
The other way round, a client that pings more often than ``min_recv_ping_interval_without_data_ms`` while
it sends nothing (a stream held open between requests, tritonclient's ``KeepAliveOptions``) is answered
GOAWAY ``too_many_pings`` after ``max_ping_strikes`` such pings, and its calls end UNAVAILABLE: lower the
interval (and permit pings without calls) to accept such clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from server.settings import Settings

# Triton's --grpc-infer-response-compression-level: gRPC's compression levels, each choosing an algorithm among
# those the client accepts (every gRPC client accepts gzip and deflate).
COMPRESSION_LEVELS = {"none": 0, "low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True)
class GrpcKeepalive:
    time_ms: int = 7_200_000  # the server pings a connection idle this long
    timeout_ms: int = 20_000  # ... and closes it when the ping is not answered within this
    permit_without_calls: bool = False  # clients may ping a connection with no call open
    max_pings_without_data: int = 2  # pings the server sends with no data between them (0: no limit)
    min_recv_ping_interval_without_data_ms: int = 300_000  # shortest idle-ping interval accepted (gRPC's default)
    max_ping_strikes: int = 2  # pings sooner than that, tolerated before GOAWAY too_many_pings (0: no limit)

    def __post_init__(self) -> None:
        for flag, value, least in (("--grpc-keepalive-time", self.time_ms, 1),
                                   ("--grpc-keepalive-timeout", self.timeout_ms, 1),
                                   ("--grpc-http2-max-pings-without-data", self.max_pings_without_data, 0),
                                   ("--grpc-http2-min-recv-ping-interval-without-data",
                                    self.min_recv_ping_interval_without_data_ms, 0),
                                   ("--grpc-http2-max-ping-strikes", self.max_ping_strikes, 0)):
            if not least <= value <= 2**31 - 1:
                raise ValueError(f"{flag} must be an integer in {least}..{2**31 - 1}, got {value}")

    def options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            ("grpc.http2.max_pings_without_data", self.max_pings_without_data),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_recv_ping_interval_without_data_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
        ]


def server_options(s: "Settings") -> list[tuple[str, Any]]:
    """The server's channel arguments. Responses are compressed at ``grpc_response_compression`` (inference
    responses are nearly all the bytes a server sends; requests arrive compressed or not, as each client
    chooses, whatever this says)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", s.grpc_max_concurrent_streams),
        *s.grpc_keepalive.options(),
    ]
    if s.grpc_response_compression != "none":
        options.append(("grpc.default_compression_level", COMPRESSION_LEVELS[s.grpc_response_compression]))
    if s.grpc_max_connection_age_s > 0:
        # GOAWAY after the age; calls in flight get the drain timeout to finish.
        options.append(("grpc.max_connection_age_ms", int(s.grpc_max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(s.drain_timeout_s * 1000)))
    return options


def build_server(s: "Settings", handlers: "list[grpc.GenericRpcHandler]", refused: Any = None) -> grpc.aio.Server:
    """The server with ``handlers``, not yet listening; with a restricted API, its interceptor
    (server/restrictions.py), counting refusals in ``refused``."""
    from server.restrictions import GrpcRestrictions

    restricted = s.grpc_restricted
    server = grpc.aio.server(options=server_options(s),
                             interceptors=[GrpcRestrictions(restricted, refused)] if restricted else None)
    server.add_generic_rpc_handlers(handlers)
    return server


def bind(server: grpc.aio.Server, address: str, credentials: "grpc.ServerCredentials | None") -> int:
    """Listen on ``address`` (TLS with ``credentials``); the port, 0 when the address is in use or not here."""
    try:
        return (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError:  # grpcio >= 1.6x raises where older releases returned 0
        return 0
