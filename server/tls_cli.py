"""``fleetserve serve``'s TLS flags, named as Triton's gRPC ones (``--grpc-use-ssl``, ``--grpc-server-cert``, ...),
with REST's twins (``--http-use-ssl``, ...), which Triton lacks; read into the two listeners' ``TlsConfig``."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.tls import TlsConfig

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def switch(text: str) -> bool:
    """A switch's value: Triton writes its switches ``--grpc-use-ssl=true``; a bare ``--grpc-use-ssl`` (with
    ``nargs="?", const=True``) means true too."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "TLS (README \"TLS\"): certificate files in PEM, re-read when they change; the metrics port stays plain")
    for transport, name, what in (("grpc", "gRPC", "gRPC"), ("http", "REST", "REST (HTTPS)")):
        group.add_argument(f"--{transport}-use-ssl", type=switch, nargs="?", const=True, default=False,
                           metavar="BOOL", help=f"serve {what} over TLS (default false)")
        group.add_argument(f"--{transport}-use-ssl-mutual", type=switch, nargs="?", const=True, default=False,
                           metavar="BOOL", help=f"{name} clients must present a certificate that chains to "
                                                f"--{transport}-root-cert (implies --{transport}-use-ssl)")
        fallback = "" if transport == "grpc" else " (default: the --grpc-* one)"
        group.add_argument(f"--{transport}-server-cert", type=Path, metavar="PEM",
                           help=f"{name}'s certificate chain{fallback}")
        group.add_argument(f"--{transport}-server-key", type=Path, metavar="PEM",
                           help=f"{name}'s private key{fallback}")
        group.add_argument(f"--{transport}-root-cert", type=Path, metavar="PEM",
                           help=f"the CA bundle {name} clients' certificates must chain to{fallback}"
                                + ("; also what fleet peers' certificates are checked against" if transport == "grpc"
                                   else ""))
    group.add_argument("--tls-reload-secs", type=float, default=10.0, metavar="SECONDS",
                       help="REST checks its certificate files this often (gRPC before every new connection; "
                            "default 10)")


def tls_configs(args: argparse.Namespace) -> tuple[TlsConfig | None, TlsConfig | None]:
    """The gRPC and REST listeners' TLS (None: plain); raises ValueError with the flag to fix."""
    grpc = _config(args, "grpc", None)
    return grpc, _config(args, "http", grpc)


def _config(args: argparse.Namespace, transport: str, fallback: TlsConfig | None) -> TlsConfig | None:
    def value(flag: str) -> Path | None:
        return getattr(args, f"{transport}_{flag}")

    mutual = bool(value("use_ssl_mutual"))
    if not (value("use_ssl") or mutual):
        given = [f"--{transport}-{flag.replace('_', '-')}" for flag in ("server_cert", "server_key", "root_cert")
                 if value(flag) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply only with --{transport}-use-ssl")
        return None
    cert = value("server_cert") or (fallback.cert if fallback else None)
    key = value("server_key") or (fallback.key if fallback else None)
    root = value("root_cert") or (fallback.root if fallback else None)
    if cert is None or key is None:
        raise ValueError(f"--{transport}-use-ssl needs --{transport}-server-cert and --{transport}-server-key "
                         "(PEM files)")
    if mutual and root is None:
        raise ValueError(f"--{transport}-use-ssl-mutual needs --{transport}-root-cert: the CA bundle clients' "
                         "certificates must chain to")
    return TlsConfig(cert=cert, key=key, root=root, mutual=mutual)
