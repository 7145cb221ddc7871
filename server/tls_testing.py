"""Test certificates: a CA of trustme's (a test dependency) and its server and client certificates as files,
and the ``fleetserve serve`` flags that serve them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pki:
    """A CA's bundle, a server certificate for 127.0.0.1 and localhost, and a client certificate, as files."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path, *hosts: str, not_after: datetime | None = None) -> Pki:
    """``hosts``: what the server certificate is for (default 127.0.0.1 and localhost); ``not_after``: when it
    expires (default: trustme's, in the year 3000)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")), not_after=not_after)
    client = ca.issue_cert("client@example.test")
    pki = Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "client.pem",
              folder / "client-key.pem")
    ca.cert_pem.write_to_path(str(pki.ca))
    server.private_key_pem.write_to_path(str(pki.key))
    server.cert_chain_pems[0].write_to_path(str(pki.cert))
    client.private_key_pem.write_to_path(str(pki.client_key))
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    return pki


def tls_args(pki: Pki, *, mutual: bool = False, http: bool = True) -> list[str]:
    args = ["--grpc-use-ssl", "--grpc-server-cert", str(pki.cert), "--grpc-server-key", str(pki.key),
            "--grpc-root-cert", str(pki.ca)]
    if mutual:
        args.append("--grpc-use-ssl-mutual")
    if http:
        args.append("--http-use-ssl-mutual" if mutual else "--http-use-ssl")  # REST takes the gRPC files
    return args
