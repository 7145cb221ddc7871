"""tritonclient.grpc against a real fleetserve: health, metadata, config, inference, streams, statistics."""

from __future__ import annotations

import asyncio
import queue
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from model_store.datatypes import BY_NAME
from model_store.testing import IDENTITY_DATATYPES, reference_outputs
from server.testing import scrape_metrics


@pytest.fixture(scope="module")
def client(server):
    c = tc.InferenceServerClient(server.grpc_address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer(client, model, arrays, outputs=None, version="", request_id=""):
    inputs = []
    for name, arr in arrays.items():
        dt = "BYTES" if arr.dtype == object else tc.np_to_triton_dtype(arr.dtype)
        inp = tc.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    requested = [tc.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, inputs, outputs=requested, model_version=version, request_id=request_id)


def test_health_and_server_metadata(client, server):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("dense")
    assert not client.is_model_ready("corrupt")
    meta = client.get_server_metadata()
    assert meta.name == "fleetserve"
    assert {"model_configuration", "model_repository", "statistics", "logging", "classification",
            "system_shared_memory"} <= set(meta.extensions)
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata("simple")
    assert meta.name == "simple" and meta.versions == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "FP32", [-1, 4]), ("INPUT1", "FP32", [-1, 4])]
    config = client.get_model_config("simple").config
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert list(config.input[0].dims) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    # a model without config.pbtxt is completed from its ONNX signature
    dense = client.get_model_config("dense").config
    assert dense.max_batch_size > 0 and list(dense.input[0].dims) == [16] and dense.output[0].name == "OUTPUT0"
    nobatch = client.get_model_config("nobatch").config
    assert nobatch.max_batch_size == 0 and list(nobatch.input[0].dims) == [1, 16]


def test_label_files_are_reported_as_configured_and_one_that_cannot_be_read_fails_the_load(client, repository):
    """As in Triton: classification answers would lose their labels without the file, so the model is not served."""
    assert client.is_model_ready("labelled")
    config = client.get_model_config("labelled").config
    assert [(o.name, o.label_filename) for o in config.output] == [("OUTPUT0", "labels.txt"), ("OUTPUT1", "few.txt")]
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["label_missing"].state == "UNAVAILABLE"
    assert index["label_missing"].reason == (
        f"model 'label_missing' output 'OUTPUT0': label_filename 'gone.txt' cannot be read from the model folder "
        f"{repository / 'label_missing'}: No such file or directory; add the file (one label per line, line i naming "
        "class i) or remove label_filename")
    assert index["label_outside"].state == "UNAVAILABLE"
    assert index["label_outside"].reason == (
        f"model 'label_outside' output 'OUTPUT0': label_filename '../labelled/labels.txt' leads outside the model "
        f"folder {repository / 'label_outside'}; the label file must be in the model folder, beside config.pbtxt")


def test_a_parameter_fleetserve_does_not_read_is_reported_and_only_warns(client, server):
    assert client.is_model_ready("tuned")
    config = client.get_model_config("tuned").config
    assert config.parameters["execution_mode"].string_value == "1"
    warned = [line for line in server.lines if "execution_mode" in line]
    assert len(warned) == 1, warned
    assert "model 'tuned': parameters execution_mode in " in warned[0]
    assert "are not read by fleetserve and have no effect; it reads: intra_op_thread_count, " in warned[0]


@pytest.mark.parametrize("model, arrays", [
    ("dense", {"INPUT0": np.random.default_rng(1).standard_normal((3, 16), dtype=np.float32)}),
    ("simple", {"INPUT0": np.arange(8, dtype=np.float32).reshape(2, 4),
                "INPUT1": np.ones((2, 4), dtype=np.float32)}),
    ("add_one", {"INPUT0": np.random.default_rng(2).standard_normal((5, 16), dtype=np.float32)}),
    ("nobatch", {"INPUT0": np.random.default_rng(3).standard_normal((1, 16), dtype=np.float32)}),
])
def test_infer_matches_in_process_onnxruntime(client, repository, model, arrays):
    result = infer(client, model, arrays)
    version = "2" if model == "add_one" else "1"
    expected = reference_outputs(repository / model / version / "model.onnx", arrays)
    for name, value in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-6, atol=1e-6)
    assert result.get_response().model_version == version


def test_versions_default_latest_and_explicit(client):
    x = np.zeros((1, 16), dtype=np.float32)
    assert infer(client, "add_one", {"INPUT0": x}).get_response().model_version == "2"
    # the default version policy serves only the latest; version 1 is not served
    with pytest.raises(tc.InferenceServerException) as err:
        infer(client, "add_one", {"INPUT0": x}, version="1")
    assert err.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("datatype", IDENTITY_DATATYPES)
def test_every_datatype_round_trips_raw(client, datatype):
    rng = np.random.default_rng(4)
    if datatype == "BYTES":
        arr = np.array([[b"a", b"", "\u00e9t\u00e9".encode()], [b"x" * 100, b"\x00z", b"q"]], dtype=object)
    elif datatype == "BOOL":
        arr = rng.integers(0, 2, (2, 3)).astype(bool)
    else:
        dtype = BY_NAME[datatype].numpy
        arr = (rng.standard_normal((2, 3)) * 100).astype(dtype) if dtype.kind == "f" else \
            rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (2, 3), dtype=dtype, endpoint=True)
    result = infer(client, f"identity_{datatype.lower()}", {"INPUT0": arr})
    out = result.as_numpy("OUTPUT0")
    assert out.shape == arr.shape
    if datatype == "BYTES":
        assert out.tolist() == arr.tolist()
    else:
        assert out.dtype == arr.dtype
        np.testing.assert_array_equal(out, arr)
    response = result.get_response()
    assert response.outputs[0].datatype == datatype
    assert len(response.raw_output_contents) == 1  # raw output by default


TYPED = {
    "BOOL": ("bool_contents", [True, False, True]),
    "INT8": ("int_contents", [-128, 0, 127]),
    "INT16": ("int_contents", [-32768, 5, 32767]),
    "INT32": ("int_contents", [-(2**31), 7, 2**31 - 1]),
    "INT64": ("int64_contents", [-(2**63), 9, 2**63 - 1]),
    "UINT8": ("uint_contents", [0, 1, 255]),
    "UINT16": ("uint_contents", [0, 1, 65535]),
    "UINT32": ("uint_contents", [0, 1, 2**32 - 1]),
    "UINT64": ("uint64_contents", [0, 1, 2**64 - 1]),
    "FP32": ("fp32_contents", [1.5, -2.25, 0.0]),
    "FP64": ("fp64_contents", [1.5e300, -2.25, 0.0]),
    "BYTES": ("bytes_contents", [b"one", b"", b"three"]),
}


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_every_datatype_round_trips_typed_contents(stub, datatype):
    field, values = TYPED[datatype]
    request = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}", id="typed-1")
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 3])
    getattr(tensor.contents, field).extend(values)
    response = stub.ModelInfer(request)
    assert response.id == "typed-1"
    out = response.outputs[0]
    assert out.datatype == datatype and list(out.shape) == [1, 3]
    if datatype == "BYTES":
        raw, items = response.raw_output_contents[0], []
        while raw:
            n = int.from_bytes(raw[:4], "little")
            items.append(raw[4:4 + n])
            raw = raw[4 + n:]
        assert items == values
    else:
        decoded = np.frombuffer(response.raw_output_contents[0], dtype=BY_NAME[datatype].numpy)
        assert decoded.tolist() == values


def test_fp16_has_no_typed_contents_and_says_so(stub):
    request = service_pb2.ModelInferRequest(model_name="identity_fp16")
    request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in err.value.details()


@pytest.mark.parametrize("datatype, field, value, says", [
    ("UINT8", "uint_contents", 300, "300 is out of range for UINT8 (0 to 255)"),
    ("UINT16", "uint_contents", 70000, "70000 is out of range for UINT16 (0 to 65535)"),
    ("INT8", "int_contents", -200, "-200 is out of range for INT8 (-128 to 127)"),
    ("INT16", "int_contents", 40000, "40000 is out of range for INT16 (-32768 to 32767)"),
])
def test_typed_contents_beyond_a_narrow_datatype_are_refused_naming_its_range(stub, datatype, field, value, says):
    # int_contents and uint_contents are 32-bit: the value fits the field, not the datatype (numpy 1.x wraps it).
    request = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    getattr(request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 3]).contents, field).extend([1, value, 2])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"input 'INPUT0': {says}"


@pytest.mark.parametrize("datatype, given, used", [
    ("UINT32", "int_contents", "uint_contents"),  # -1 cannot be a UINT32; the field is the wrong one
    ("INT32", "fp32_contents", "int_contents"),  # beside the right field, it would be dropped unread
])
def test_typed_contents_in_a_field_the_datatype_does_not_use_are_refused(stub, datatype, given, used):
    request = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    contents = request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 3]).contents
    getattr(contents, given).extend([-1, 2, 3])
    if datatype == "INT32":
        contents.int_contents.extend([1, 2, 3])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (f"input 'INPUT0': {datatype} values go in contents.{used}, "
                                   f"but the request sets contents.{given}")


def test_bytes_that_are_not_utf8_fail_their_own_request_not_the_batch_it_would_join(stub, server):
    def raw(items):
        return b"".join(len(i).to_bytes(4, "little") + i for i in items)

    def call(rid, shape, items):
        request = service_pb2.ModelInferRequest(model_name="batching_bytes", id=rid)
        request.inputs.add(name="INPUT0", datatype="BYTES", shape=shape)
        request.raw_input_contents.append(raw(items))
        try:
            response = stub.ModelInfer(request)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return list(response.outputs[0].shape), response.raw_output_contents[0]

    good = {f"g{i}": ([1, 2], [b"row%d" % i, b""]) if i % 2 else ([2, 3], [b"\x00", b"a%d" % i, b"", b"b", b"", b"c"])
            for i in range(6)}
    before = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="batching_bytes")).model_stats[0]
    with ThreadPoolExecutor(8) as pool:
        futures = {rid: pool.submit(call, rid, shape, items) for rid, (shape, items) in good.items()}
        bad = pool.submit(call, "bad", [1, 2], [b"ok", b"caf\xe9"])  # Latin-1, not UTF-8
        for rid, (shape, items) in good.items():
            assert futures[rid].result() == (shape, raw(items)), rid  # own rows, own shape
        assert bad.result() == (grpc.StatusCode.INVALID_ARGUMENT, (
            "input 'INPUT0': element [0, 1] is not UTF-8 text (byte 0xe9 at offset 3); this model's BYTES tensors "
            "are ONNX strings, which hold UTF-8 text only"))
    after = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="batching_bytes")).model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 6
    assert after.execution_count - before.execution_count < 6  # they did share batches (one per shape, at best)


def test_requested_outputs_are_honoured_and_request_id_echoed(client):
    arrays = {"INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.full((1, 4), 2, np.float32)}
    result = infer(client, "simple", arrays, outputs=["OUTPUT1"], request_id="req-42")
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    assert response.id == "req-42"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((1, 4), -1, np.float32))


def test_stream_infer(client):
    before = client.get_inference_statistics("add_one").model_stats[0].inference_stats
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        for i in range(20):
            x = np.full((1, 16), i, np.float32)
            inp = tc.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("add_one", [inp], request_id=str(i))
        bad = tc.InferInput("INPUT0", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
        client.async_stream_infer("add_one", [bad], request_id="bad")
        got, errors = {}, []
        for _ in range(21):
            result, error = responses.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                got[result.get_response().id] = result.as_numpy("OUTPUT0")
    finally:
        client.stop_stream()
    assert sorted(got, key=int) == [str(i) for i in range(20)]
    for key, value in got.items():
        np.testing.assert_array_equal(value, np.full((1, 16), int(key) + 1, np.float32))
    assert len(errors) == 1 and "INPUT0" in errors[0] and "[1, 5]" in errors[0]
    after = client.get_inference_statistics("add_one").model_stats[0].inference_stats
    assert after.success.count - before.success.count == 20  # answered from a callback, counted all the same
    assert after.fail.count - before.fail.count == 1


def test_stream_answers_requests_without_an_id_in_their_order(client):
    """Without an id the order is all a client can match by (Triton keeps it); requests with one are not held."""
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        for model, features, request_id in (("held", 4, ""), ("add_one", 16, ""), ("add_one", 16, "named")):
            inp = tc.InferInput("INPUT0", [1, features], "FP32")
            inp.set_data_from_numpy(np.zeros((1, features), np.float32))
            client.async_stream_infer(model, [inp], request_id=request_id)  # "held" waits 0.4 s in its queue
        got = []
        for _ in range(3):
            result, error = responses.get(timeout=30)
            assert error is None
            got.append((result.get_response().id, result.get_response().model_name))
    finally:
        client.stop_stream()
    assert got == [("named", "add_one"), ("", "held"), ("", "add_one")]


async def test_one_connection_has_at_most_1024_calls_open_and_its_client_queues_the_rest(server):
    # Each open call costs the server memory: one connection holding idle streams grew it without bound.
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        streams = [stub.ModelStreamInfer() for _ in range(1024)]  # opened, never written to
        try:
            with pytest.raises(grpc.aio.AioRpcError) as waited:
                await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=2)
            assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # queued by the client, not refused
            streams.pop().cancel()
            assert (await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)).live
        finally:
            for call in streams:
                call.cancel()
        await asyncio.sleep(0)


def test_stream_responses_say_they_are_final_and_errors_name_their_request(stub):
    """Each response is its request's only one: marked ``triton_final_response`` as Triton marks it on a stream
    (clients that set enable_empty_final_response wait for it); an error carries the request's id, model and version."""
    good = service_pb2.ModelInferRequest(model_name="add_one", id="good")
    good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    good.raw_input_contents.append(np.zeros((1, 16), np.float32).tobytes())
    good.parameters["triton_enable_empty_final_response"].bool_param = True
    bad = service_pb2.ModelInferRequest()
    bad.CopyFrom(good)
    bad.id, bad.model_version = "bad", "9"
    replies = {r.infer_response.id: r for r in stub.ModelStreamInfer(iter([good, bad]), timeout=30)}
    assert set(replies) == {"good", "bad"}
    for reply in replies.values():
        assert reply.infer_response.parameters["triton_final_response"].bool_param
    assert replies["good"].error_message == "" and replies["good"].infer_response.model_version == "2"
    failed = replies["bad"]
    assert "no version '9'" in failed.error_message or "no version 9" in failed.error_message
    assert (failed.infer_response.model_name, failed.infer_response.model_version) == ("add_one", "9")


def test_every_stream_response_is_marked_final_as_triton_marks_it(client):
    """Clients of Triton streams (enable_empty_final_response, decoupled-style loops) wait for
    triton_final_response; each of our requests has one response, so each is the last."""
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        inp = tc.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
        client.async_stream_infer("add_one", [inp], request_id="plain")
        client.async_stream_infer("add_one", [inp], request_id="asked", enable_empty_final_response=True)
        got = {}
        for _ in range(2):
            result, error = responses.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            got[response.id] = response.parameters["triton_final_response"].bool_param
    finally:
        client.stop_stream()
    assert got == {"plain": True, "asked": True}


def test_a_classification_output_is_answered_with_its_top_classes(client):
    """tritonclient's class_count (Triton's classification extension); server/tests/test_classification.py has the rest."""
    inp = tc.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.arange(16, dtype=np.float32).reshape(1, 16) / 4)  # add_one: x + 1
    result = client.infer("add_one", [inp], outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=3)])
    assert result.as_numpy("OUTPUT0").tolist() == [[b"4.750000:15", b"4.500000:14", b"4.250000:13"]]
    assert client.infer("add_one", [inp], outputs=[tc.InferRequestedOutput("OUTPUT0")]).as_numpy("OUTPUT0").shape == (1, 16)


SEQUENCE_REFUSED = "model 'add_one' runs no sequences (its config has no sequence_batching)"


@pytest.mark.parametrize("sequence", [
    {"sequence_id": 7, "sequence_start": True},
    {"sequence_id": "session-a", "sequence_end": True},
], ids=["int-id-start", "string-id-end"])
def test_a_sequence_request_is_refused_not_run_as_if_it_had_no_sequence(client, sequence):
    """tritonclient's sequence_id / sequence_start / sequence_end were ignored: the request ran on its own and
    the caller believed its sequence's state was kept. UNIMPLEMENTED over unary, async and stream alike."""
    inp = tc.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    for _ in range(2):  # the second time the structure is known (the template decoder) and still refused
        with pytest.raises(tc.InferenceServerException) as err:
            client.infer("add_one", [inp], **sequence)
        assert err.value.status() == "StatusCode.UNIMPLEMENTED", err.value.message()
        assert SEQUENCE_REFUSED in err.value.message(), err.value.message()
        assert "'sequence_id'" in err.value.message()
    done: queue.Queue = queue.Queue()
    client.async_infer("add_one", [inp], lambda result, error: done.put((result, error)), **sequence)
    result, error = done.get(timeout=10)
    assert result is None and error.status() == "StatusCode.UNIMPLEMENTED" and SEQUENCE_REFUSED in error.message()
    client.start_stream(lambda result, error: done.put((result, error)))
    try:
        client.async_stream_infer("add_one", [inp], request_id="seq", **sequence)
        client.async_stream_infer("add_one", [inp], request_id="plain")
        answers = [done.get(timeout=10), done.get(timeout=10)]
    finally:
        client.stop_stream()
    errors = [e.message() for _, e in answers if e is not None]
    assert len(errors) == 1 and SEQUENCE_REFUSED in errors[0], errors  # and the stream goes on
    assert [r.get_response().id for r, e in answers if e is None] == ["plain"]
    assert client.infer("add_one", [inp]).as_numpy("OUTPUT0").shape == (1, 16)


@pytest.mark.parametrize("call, says", [
    (lambda c: c.get_cuda_shared_memory_status(), "CudaSharedMemoryStatus: CUDA shared memory is not supported"),
    (lambda c: c.register_cuda_shared_memory("r", b"aGFuZGxl", 0, 64), "CudaSharedMemoryRegister: CUDA shared memory"),
    (lambda c: c.unregister_cuda_shared_memory(), "CudaSharedMemoryUnregister: CUDA shared memory"),
], ids=["cuda-status", "cuda-register", "cuda-unregister"])
def test_tritons_methods_not_served_say_why_and_what_to_do_instead(client, call, says):
    """As their REST endpoints answer 501: UNIMPLEMENTED with the reason, not grpc's bare "Method not found!"."""
    with pytest.raises(tc.InferenceServerException) as err:
        call(client)
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    assert says in err.value.message(), err.value.message()


def test_a_tensor_in_an_unregistered_region_is_not_found_never_answered_in_the_body(client):
    """An output named in a region that is not registered: NOT_FOUND, never answered in raw_output_contents
    while the caller reads a stale region; the same for an input (server/tests/test_shared_memory.py has the rest)."""
    x = tc.InferInput("INPUT0", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    out = tc.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("region", 64)
    for _ in range(2):  # the second time the structure is known (the template decoder) and still refused
        with pytest.raises(tc.InferenceServerException) as err:
            client.infer("add_one", [x], outputs=[out])
        assert err.value.status() == "StatusCode.NOT_FOUND", err.value.message()
        assert err.value.message().startswith("no system shared-memory region named 'region' is registered")
    x.set_shared_memory("region", 64)
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer("add_one", [x])
    assert err.value.status() == "StatusCode.NOT_FOUND", err.value.message()


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_rows(server):
    def call(i: int) -> tuple[int, np.ndarray]:
        c = tc.InferenceServerClient(server.grpc_address)
        try:
            x = np.full((1, 4), float(i), np.float32)
            return i, infer(c, "batching", {"INPUT0": x}).as_numpy("OUTPUT0")
        finally:
            c.close()

    stats_client = tc.InferenceServerClient(server.grpc_address)
    before = stats_client.get_inference_statistics("batching").model_stats[0]
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(call, range(64)))
    for i, out in results:
        np.testing.assert_array_equal(out, np.full((1, 4), i + 1.0, np.float32))
    stats = stats_client.get_inference_statistics("batching").model_stats[0]
    stats_client.close()
    assert stats.inference_count - before.inference_count == 64
    new_batches = stats.execution_count - before.execution_count
    assert new_batches < 64
    assert max(b.batch_size for b in stats.batch_stats) > 1


def test_statistics_match_what_was_sent(server):
    c = tc.InferenceServerClient(server.grpc_address)
    before = c.get_inference_statistics("dense").model_stats[0]
    for rows in (1, 2, 3):
        infer(c, "dense", {"INPUT0": np.zeros((rows, 16), np.float32)})
    with pytest.raises(tc.InferenceServerException):
        infer(c, "dense", {"INPUT0": np.zeros((1, 15), np.float32)})
    after = c.get_inference_statistics("dense").model_stats[0]
    c.close()
    s0, s1 = before.inference_stats, after.inference_stats
    assert after.name == "dense" and after.version == "1"
    assert s1.success.count - s0.success.count == 3
    assert s1.fail.count - s0.fail.count == 1
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 3
    assert s1.queue.count - s0.queue.count == 3 and s1.compute_infer.count - s0.compute_infer.count == 3
    assert s1.compute_infer.ns > s0.compute_infer.ns
    sizes = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert {1, 2, 3} <= set(sizes)
    assert after.last_inference > 0


def test_a_batch_the_model_fails_counts_its_requests_as_failures_only(server):
    """As Triton: queue and compute statistics count the requests of batches that ran, so a failed run's requests
    are in ``fail`` alone and queue, compute and success counts stay equal (perf_analyzer divides by them)."""
    c = tc.InferenceServerClient(server.grpc_address)
    queued = ("fleetserve_queue_duration_seconds_count", frozenset({"model": "fragile", "version": "1"}.items()))
    before, queued_before = c.get_inference_statistics("fragile").model_stats[0], scrape_metrics(server.metrics_url)[queued]
    for _ in range(3):
        with pytest.raises(tc.InferenceServerException) as err:
            infer(c, "fragile", {"INPUT0": np.zeros((1, 4), np.float32)})  # 4 values cannot reshape to [-1, 3]
        assert err.value.status() == "StatusCode.INTERNAL"
    after = c.get_inference_statistics("fragile").model_stats[0]
    c.close()
    s0, s1 = before.inference_stats, after.inference_stats
    assert (s1.fail.count - s0.fail.count, s1.success.count - s0.success.count) == (3, 0)
    assert s1.queue.count == s0.queue.count and s1.queue.ns == s0.queue.ns
    assert s1.compute_infer.count == s0.compute_infer.count
    assert (after.inference_count, after.execution_count) == (before.inference_count, before.execution_count)
    assert scrape_metrics(server.metrics_url)[queued] == queued_before
