"""gRPC compression: requests compressed by the client are read whatever the server's setting, and
``--grpc-infer-response-compression-level`` compresses the responses, as counted on the wire by a relay
between tritonclient and a real server."""

from __future__ import annotations

import functools
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tc

from model_store.testing import ModelSpec, write_identity_model, write_model_repository
from server.testing import ServerProcess, wait_until

COLUMNS = 250_000  # 1 MB of FP32 zeros each way: compresses to about a thousandth


class ByteCountingRelay:
    """A TCP relay on 127.0.0.1 to ``port``, counting the bytes the server sends back."""

    def __init__(self, port: int) -> None:
        self.port_to = port
        self.received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.port_to))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    with self._lock:
                        self.received += len(data)
                sink.sendall(data)
        except OSError:  # the other direction closed the pair
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            source.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    return write_model_repository(tmp_path_factory.mktemp("repo"), {"ident": ModelSpec(
        functools.partial(write_identity_model, datatype="FP32", dims=(-1,)), config="max_batch_size: 8\n")})


def bytes_back(server: ServerProcess, request_compression: str | None) -> int:
    """What the server sent back for one 1 MB identity request (the connection's set-up excluded)."""
    relay = ByteCountingRelay(server.grpc_port)
    try:
        with tc.InferenceServerClient(f"127.0.0.1:{relay.port}") as client:
            assert client.is_server_live()
            time.sleep(0.2)
            before = relay.received
            tensor = tc.InferInput("INPUT0", [1, COLUMNS], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, COLUMNS), np.float32))
            result = client.infer("ident", [tensor], compression_algorithm=request_compression)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.zeros((1, COLUMNS), np.float32))
            wait_until(lambda: relay.received > before, timeout_s=5)
            time.sleep(0.2)
            return relay.received - before
    finally:
        relay.close()


@pytest.mark.parametrize("request_compression", [None, "gzip", "deflate"])
def test_responses_are_plain_by_default_and_compressed_at_the_level_asked(repo, request_compression) -> None:
    with ServerProcess(repo) as server:
        assert bytes_back(server, request_compression) > 4 * COLUMNS
    with ServerProcess(repo, "--grpc-infer-response-compression-level", "high") as server:
        assert bytes_back(server, request_compression) < COLUMNS // 50


def test_an_unknown_level_is_refused(repo, capsys) -> None:
    from server.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--model-repository", str(repo), "--grpc-infer-response-compression-level", "max"])
    assert "invalid choice: 'max'" in capsys.readouterr().err
