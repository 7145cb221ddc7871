"""Triton's system shared-memory extension through real tritonclient clients, over gRPC (unary and stream)
and REST: regions registered, tensors read from and written to them, every error with its status, and a
region unregistered while a request that uses it is in flight.

Every region a test creates is destroyed, and every registration undone, when the test ends (``regions``).
"""

from __future__ import annotations

import os
import queue
import time
import uuid
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

TRANSPORTS = ("grpc", "http")
NOT_FOUND = {"grpc": "StatusCode.NOT_FOUND", "http": "404"}
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}
EXISTS = {"grpc": "StatusCode.ALREADY_EXISTS", "http": "409"}


def _key() -> str:
    return f"/fleetserve-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(server, transport: str) -> Iterator[Any]:
    c = tc.InferenceServerClient(server.grpc_address) if transport == "grpc" else th.InferenceServerClient(
        server.http_address)
    yield c
    c.close()


@pytest.fixture
def regions(server) -> Iterator[Callable[[str, int], Any]]:
    """``make(name, byte_size)``: a new shared-memory object under a fresh key (its handle, with ``.key``).
    At the end: every region on the server unregistered, every object made destroyed."""
    made: list[Any] = []

    def make(name: str, byte_size: int) -> Any:
        key = _key()
        handle = shm.create_shared_memory_region(name, key, byte_size, create_only=True)
        handle.key = key
        made.append(handle)
        return handle

    yield make
    admin = tc.InferenceServerClient(server.grpc_address)
    try:
        admin.unregister_system_shared_memory()
    finally:
        admin.close()
        for handle in made:
            shm.destroy_shared_memory_region(handle)


def _module(transport: str) -> Any:
    return tc if transport == "grpc" else th


def _error(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_fp32_inputs_and_outputs_at_offsets_of_their_regions(client, transport, regions):
    """INPUT0 and INPUT1 of "simple" from one region (registered 100 bytes into its object, an offset mmap
    cannot take as is), OUTPUT0 and OUTPUT1 into another: the sums and differences land where asked."""
    m = _module(transport)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, np.float32)
    ins = regions("in", 100 + 64)
    outs = regions("out", 64)
    shm.set_shared_memory_region(ins, [a, b], offset=100)
    client.register_system_shared_memory("in", ins.key, 64, offset=100)
    client.register_system_shared_memory("out", outs.key, 64)
    x0, x1 = m.InferInput("INPUT0", [2, 4], "FP32"), m.InferInput("INPUT1", [2, 4], "FP32")
    x0.set_shared_memory("in", 32)
    x1.set_shared_memory("in", 32, offset=32)
    o0, o1 = m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")
    o0.set_shared_memory("out", 32)
    o1.set_shared_memory("out", 32, offset=32)
    for _ in range(2):  # the second time, the gRPC decoder knows the request's structure
        result = client.infer("simple", [x0, x1], outputs=[o0, o1])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(outs, np.float32, [2, 4]), a + b)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(outs, np.float32, [2, 4], offset=32), a - b)
        shm.set_shared_memory_region(outs, [np.zeros((4, 4), np.float32)])
    entry = result.get_output("OUTPUT1")
    if transport == "grpc":  # no data; the region, the bytes written and the offset echoed
        params = {k: v.string_param or v.int64_param for k, v in entry.parameters.items()}
        assert params == {"shared_memory_region": "out", "shared_memory_byte_size": 32, "shared_memory_offset": 32}
        assert result.get_response().raw_output_contents == [b"", b""]
    else:  # as Triton's REST answer: name, datatype and shape only
        assert entry == {"name": "OUTPUT1", "datatype": "FP32", "shape": [2, 4]}


def test_bytes_tensors_in_regions_keep_their_wire_form(client, transport, regions):
    m = _module(transport)
    words = np.array([[b"shared", b"", b"memory \xc3\xa9"]], dtype=object)
    serialized = serialize_byte_tensor(words)
    size = serialized_byte_size(serialized)
    ins, outs = regions("words_in", size), regions("words_out", 256)
    shm.set_shared_memory_region(ins, [serialized])
    client.register_system_shared_memory("words_in", ins.key, size)
    client.register_system_shared_memory("words_out", outs.key, 256)
    x = m.InferInput("INPUT0", [1, 3], "BYTES")
    x.set_shared_memory("words_in", size)
    out = m.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("words_out", 256)
    result = client.infer("identity_bytes", [x], outputs=[out])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(outs, np.object_, [1, 3]), words)
    if transport == "grpc":
        assert result.get_output("OUTPUT0").parameters["shared_memory_byte_size"].int64_param == size


def test_tensors_in_regions_mix_with_tensors_in_the_request(client, transport, regions):
    """INPUT0 from a region, INPUT1 in the body; OUTPUT0 to a region, OUTPUT1 in the response, where the
    client finds it (over gRPC, raw_output_contents keeps an empty entry for OUTPUT0)."""
    m = _module(transport)
    a, b = np.ones((1, 4), np.float32), np.arange(4, dtype=np.float32).reshape(1, 4)
    ins, outs = regions("mix_in", 16), regions("mix_out", 16)
    shm.set_shared_memory_region(ins, [a])
    client.register_system_shared_memory("mix_in", ins.key, 16)
    client.register_system_shared_memory("mix_out", outs.key, 16)
    x0, x1 = m.InferInput("INPUT0", [1, 4], "FP32"), m.InferInput("INPUT1", [1, 4], "FP32")
    x0.set_shared_memory("mix_in", 16)
    x1.set_data_from_numpy(b)
    o0, o1 = m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")
    o0.set_shared_memory("mix_out", 16)
    result = client.infer("simple", [x0, x1], outputs=[o0, o1])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(outs, np.float32, [1, 4]), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    if transport == "http":  # and with JSON data in and out
        x1.set_data_from_numpy(b, binary_data=False)
        result = client.infer("simple", [x0, x1], outputs=[o0, th.InferRequestedOutput("OUTPUT1", binary_data=False)])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_the_stream_reads_and_writes_regions_request_by_request(server, regions):
    ins, outs = regions("stream_in", 4 * 16 * 4), regions("stream_out", 4 * 16 * 4)
    rows = [np.full((1, 16), i, np.float32) for i in range(4)]
    shm.set_shared_memory_region(ins, rows)
    client = tc.InferenceServerClient(server.grpc_address)
    done: queue.Queue[Any] = queue.Queue()
    try:
        client.register_system_shared_memory("stream_in", ins.key, 256)
        client.register_system_shared_memory("stream_out", outs.key, 256)
        client.start_stream(lambda result, error: done.put((result, error)))
        for i in range(4):
            x = tc.InferInput("INPUT0", [1, 16], "FP32")
            x.set_shared_memory("stream_in", 64, offset=64 * i)
            out = tc.InferRequestedOutput("OUTPUT0")
            out.set_shared_memory("stream_out", 64, offset=64 * i)
            client.async_stream_infer("add_one", [x], outputs=[out], request_id=str(i))
        answers = [done.get(timeout=20) for _ in range(4)]
    finally:
        client.stop_stream()
        client.close()
    assert [e for _, e in answers if e is not None] == []
    for i in range(4):
        np.testing.assert_array_equal(shm.get_contents_as_numpy(outs, np.float32, [1, 16], offset=64 * i), rows[i] + 1)


def _status(client: Any, transport: str, name: str = "") -> dict[str, tuple[str, int, int]]:
    reply = client.get_system_shared_memory_status(name)
    if transport == "grpc":
        return {n: (r.key, r.offset, r.byte_size) for n, r in reply.regions.items()}
    return {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in reply}


def test_status_lists_the_regions_and_unregister_forgets_one_or_all(client, transport, regions):
    first, second = regions("first", 64), regions("second", 4096 + 32)
    client.register_system_shared_memory("first", first.key, 64)
    client.register_system_shared_memory("second", second.key, 32, offset=4096)
    assert _status(client, transport) == {"first": (first.key, 0, 64), "second": (second.key, 4096, 32)}
    assert _status(client, transport, "second") == {"second": (second.key, 4096, 32)}
    client.unregister_system_shared_memory("first")
    client.unregister_system_shared_memory("first")  # not registered: no error, as in Triton
    assert _status(client, transport) == {"second": (second.key, 4096, 32)}
    err = _error(lambda: client.get_system_shared_memory_status("first"))
    assert err.status() == NOT_FOUND[transport]
    assert "no system shared-memory region named 'first' is registered" in err.message()
    client.register_system_shared_memory("first", first.key, 64)  # the name is free again
    client.unregister_system_shared_memory()  # every region
    assert _status(client, transport) == {}


def test_registering_a_name_twice_is_already_exists(client, transport, regions):
    region = regions("twice", 64)
    client.register_system_shared_memory("twice", region.key, 64)
    err = _error(lambda: client.register_system_shared_memory("twice", region.key, 32))
    assert err.status() == EXISTS[transport], err.message()
    assert err.message() == (f"shared-memory region 'twice' is already registered (key '{region.key}', offset 0, "
                             "64 bytes); unregister it first, or register under another name")


@pytest.mark.parametrize("key", ["../etc/passwd", "/dev/../etc/passwd", "a/b", "..", "/", "", "x" * 256])
def test_a_key_that_is_no_shared_memory_name_is_refused(client, transport, key):
    err = _error(lambda: client.register_system_shared_memory("bad", key, 8))
    assert err.status() == INVALID[transport], err.message()
    assert "is not a POSIX shared-memory name" in err.message()
    assert _status(client, transport) == {}


def test_a_missing_key_or_a_link_out_of_shared_memory_is_refused(client, transport, tmp_path):
    missing = _key()
    err = _error(lambda: client.register_system_shared_memory("gone", missing, 8))
    assert err.status() == INVALID[transport]
    assert err.message() == f"shared-memory region 'gone': cannot open key '{missing}' (no such object: create it " \
                            "first (shm_open))"
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link = _key()
    os.symlink(target, "/dev/shm" + link)
    try:  # a link planted in /dev/shm is never followed
        err = _error(lambda: client.register_system_shared_memory("link", link, 8))
    finally:
        os.unlink("/dev/shm" + link)
    assert err.status() == INVALID[transport] and f"cannot open key '{link}'" in err.message()


def test_a_region_past_the_end_of_its_object_is_refused(client, transport, regions):
    region = regions("small", 64)
    for offset, size in ((0, 65), (60, 8), (64, 1)):
        err = _error(lambda: client.register_system_shared_memory("small", region.key, size, offset=offset))
        assert err.status() == INVALID[transport], err.message()
        assert err.message() == (f"shared-memory region 'small': offset {offset} + byte_size {size} runs past the "
                                 f"end of key '{region.key}', which holds 64 bytes")
    err = _error(lambda: client.register_system_shared_memory("empty", region.key, 0))
    assert err.status() == INVALID[transport] and "byte_size must be at least 1" in err.message()


def _request(m: Any, in_size: int, in_offset: int = 0, out_size: int = 64) -> tuple[list[Any], list[Any]]:
    x = m.InferInput("INPUT0", [1, 16], "FP32")
    x.set_shared_memory("data", in_size, offset=in_offset)
    out = m.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("data", out_size, offset=64)
    return [x], [out]


@pytest.mark.parametrize("in_size, in_offset, out_size, says", [
    (48, 0, 64, "input 'INPUT0': shared_memory_byte_size is 48, but shape [1, 16] of FP32 needs 64 bytes "
                "(16 elements x 4 bytes)"),
    (64, 96, 64, "input 'INPUT0': shared_memory_offset 96 and shared_memory_byte_size 64 run past the end of "
                 "shared-memory region 'data', which holds 128 bytes"),
    (64, 128, 64, "input 'INPUT0': shared_memory_offset 128 and shared_memory_byte_size 64 run past the end"),
    (64, 0, 32, "output 'OUTPUT0': shape [1, 16] of FP32 needs 64 bytes, but shared_memory_byte_size gives it 32 "
                "in shared-memory region 'data'"),
], ids=["wrong-byte-size", "past-the-end", "offset-at-the-end", "output-too-small"])
def test_a_tensor_that_does_not_fit_its_region_is_invalid_argument(client, transport, regions, in_size, in_offset,
                                                                    out_size, says):
    region = regions("data", 128)
    client.register_system_shared_memory("data", region.key, 128)
    inputs, outputs = _request(_module(transport), in_size, in_offset, out_size)
    err = _error(lambda: client.infer("add_one", inputs, outputs=outputs))
    assert err.status() == INVALID[transport], err.message()
    assert err.message().startswith(says), err.message()


def test_a_bytes_output_too_large_for_its_place_is_invalid_argument(client, transport, regions):
    m = _module(transport)
    words = np.array([[b"a" * 40, b"b", b"c"]], dtype=object)
    region = regions("tight", 16)
    client.register_system_shared_memory("tight", region.key, 16)
    x = m.InferInput("INPUT0", [1, 3], "BYTES")
    x.set_data_from_numpy(words)
    out = m.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("tight", 16)
    err = _error(lambda: client.infer("identity_bytes", [x], outputs=[out]))
    assert err.status() == INVALID[transport], err.message()
    assert err.message() == ("output 'OUTPUT0': its 54 bytes do not fit in the 16 bytes given for it in shared-memory "
                             "region 'tight' (shared_memory_byte_size); give at least 54")


def test_an_input_in_a_region_with_data_beside_it_is_refused(server, regions):
    """Over REST an input gives one source: a region, or 'data'."""
    import requests

    region = regions("both", 64)
    requests.post(f"{server.http_url}/v2/systemsharedmemory/region/both/register",
                  json={"key": region.key, "offset": 0, "byte_size": 64}, timeout=10).raise_for_status()
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16,
                        "parameters": {"shared_memory_region": "both", "shared_memory_byte_size": 64}}]}
    reply = requests.post(f"{server.http_url}/v2/models/add_one/infer", json=body, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"] == "input 'INPUT0' is in shared memory: give it no 'data' and no binary_data_size"
    reply = requests.post(f"{server.http_url}/v2/systemsharedmemory/region/other/register",
                          json={"key": region.key, "byte_size": 64, "size": 1}, timeout=10)
    assert reply.status_code == 400 and "unknown field(s) size" in reply.json()["error"]


def test_a_region_unregistered_while_a_request_uses_it_fails_only_that_output(server, regions):
    """"held" keeps a lone request queued for 0.4 s: the region is unregistered meanwhile. The request read its
    input as it was decoded; its output, due in the region after it ran, fails NOT_FOUND saying why, and
    nothing is written there; the server closed the object at once, and new requests naming the region are
    NOT_FOUND; the server serves on."""
    region = regions("inflight", 128)
    row = np.arange(4, dtype=np.float32).reshape(1, 4)
    shm.set_shared_memory_region(region, [row])
    client = tc.InferenceServerClient(server.grpc_address)
    done: queue.Queue[Any] = queue.Queue()
    try:
        client.register_system_shared_memory("inflight", region.key, 128)
        x = tc.InferInput("INPUT0", [1, 4], "FP32")
        x.set_shared_memory("inflight", 16)
        out = tc.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("inflight", 16, offset=64)
        client.async_infer("held", [x], lambda result, error: done.put((result, error)), outputs=[out])
        time.sleep(0.1)
        client.unregister_system_shared_memory("inflight")
        assert not client.get_system_shared_memory_status().regions
        assert _open_objects(server) == [], "the object stays open after it was unregistered"
        result, error = done.get(timeout=20)
        assert result is None and error.status() == "StatusCode.NOT_FOUND", (result, error)
        assert "output 'OUTPUT0': shared-memory region 'inflight' was unregistered while the request ran; nothing " \
            "was written to it" in error.message()
        np.testing.assert_array_equal(shm.get_contents_as_numpy(region, np.float32, [1, 4], offset=64),
                                      np.zeros((1, 4), np.float32))
        err = _error(lambda: client.infer("held", [x], outputs=[out]))
        assert err.status() == "StatusCode.NOT_FOUND"
        plain = tc.InferInput("INPUT0", [1, 4], "FP32")
        plain.set_data_from_numpy(row)
        np.testing.assert_array_equal(client.infer("held", [plain]).as_numpy("OUTPUT0"), row + 1)
        assert _open_objects(server) == [], "objects of other tests' regions stay open"
    finally:
        client.close()


def _open_objects(server) -> list[str]:
    """The shared-memory objects the server process has open."""
    fds = f"/proc/{server.proc.pid}/fd"
    return [link for link in (os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds))
            if link.startswith("/dev/shm/fleetserve-test-")]


def test_an_object_shrunk_while_registered_is_invalid_argument_and_the_server_serves_on(server, regions):
    """The client truncates its object after registering a region of it. Reading or writing a mapping past the
    object's new end would kill the server (SIGBUS); through its descriptor the request fails alone, naming
    the region, and the server answers the next request."""
    region = regions("shrunk", 128)
    client = tc.InferenceServerClient(server.grpc_address)
    try:
        client.register_system_shared_memory("shrunk", region.key, 128)
        os.truncate(os.path.join("/dev/shm", region.key.lstrip("/")), 0)
        x = tc.InferInput("INPUT0", [1, 4], "FP32")
        x.set_shared_memory("shrunk", 16)
        err = _error(lambda: client.infer("held", [x]))
        assert err.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input 'INPUT0': shared-memory region 'shrunk' is no longer all there: its object now ends at byte 0" \
            in err.message()
        plain = tc.InferInput("INPUT0", [1, 4], "FP32")
        plain.set_data_from_numpy(np.ones((1, 4), np.float32))
        out = tc.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("shrunk", 16, offset=64)
        err = _error(lambda: client.infer("held", [plain], outputs=[out]))
        assert err.status() == "StatusCode.INVALID_ARGUMENT"
        assert "output 'OUTPUT0': shared-memory region 'shrunk' is no longer all there" in err.message()
        np.testing.assert_array_equal(client.infer("held", [plain]).as_numpy("OUTPUT0"), np.full((1, 4), 2.0))
        assert os.path.getsize(os.path.join("/dev/shm", region.key.lstrip("/"))) == 0  # nothing written past the end
    finally:
        client.close()
