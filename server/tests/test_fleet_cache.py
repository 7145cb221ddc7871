"""The shared response cache across two real replicas and one real redis-server.

Models opt in with ``response_cache { enable: true }``; ``short`` lives one second
(``response_cache_ttl_s``). Hits show in ModelStatistics (cache_hit / cache_miss, over gRPC and
REST) and in the fleet metrics.
"""

from __future__ import annotations

import os
import re
import signal
import time
from functools import partial
from pathlib import Path
from urllib.request import urlopen

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc

from model_store.testing import (
    ModelSpec,
    write_add_constant_model,
    write_identity_model,
    write_model_repository,
    write_slow_model,
)
from ops.fleet_metrics import FLEET_FAMILIES
from ops.redis_testing import RedisServer
from server.fleet_testing import fleet_args, infer_request, start_replicas
from server.protos import grpc_service_pb2 as pb
from server.protos import grpc_service_pb2_grpc as rpc
from server.testing import scrape_metrics

CACHED = 'response_cache { enable: true }'
SHORT = CACHED + '\nparameters { key: "response_cache_ttl_s" value: { string_value: "1" } }'


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {
        "cached": ModelSpec(write_add_constant_model, config=CACHED),
        "short": ModelSpec(write_add_constant_model, config=SHORT),
        # slow enough (about 20 ms) that the copies sent after the first arrive while it runs: at about
        # 1.4 ms (256 features, 64 MatMuls) a client slowed down for a moment sent them after it had
        # finished, and they found its answer in memory instead of in flight
        "slow": ModelSpec(partial(write_slow_model, features=1024, repeats=256), config=CACHED),
        "flex": ModelSpec(partial(write_identity_model, datatype="FP32", dims=(-1,)), config=CACHED),
        "text": ModelSpec(partial(write_identity_model, datatype="BYTES", dims=(-1,)), config=CACHED),
        "plain": ModelSpec(write_add_constant_model),
        "shared": ModelSpec(write_add_constant_model, config=CACHED),  # test_shared_memory_and_the_cache
    })
    with RedisServer() as redis:
        a, b = start_replicas([(repo, fleet_args(redis.url, "a")), (repo, fleet_args(redis.url, "b"))])
        channels = [grpc.insecure_channel(s.grpc_address) for s in (a, b)]
        try:
            yield a, b, [rpc.GRPCInferenceServiceStub(c) for c in channels]
        finally:
            for channel in channels:
                channel.close()
            a.stop()
            b.stop()


def stats(stub, model: str) -> pb.ModelStatistics:
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0]


def hits(server, model: str, tier: str) -> float:
    labels = frozenset({("model", model), ("version", "1"), ("tier", tier)})
    return scrape_metrics(server.metrics_url).get(("fleetserve_response_cache_hits_total", labels), 0.0)


def test_a_response_computed_on_one_replica_is_a_hit_on_the_other(pair):
    a, b, (stub_a, stub_b) = pair
    request = infer_request("cached", value=2.0)
    first = stub_a.ModelInfer(request)
    assert np.frombuffer(first.raw_output_contents[0], np.float32).tolist() == [3.0] * 16
    sa = stats(stub_a, "cached")
    assert sa.execution_count == 1 and sa.inference_stats.cache_miss.count == 1 and sa.inference_stats.cache_hit.count == 0
    second = stub_b.ModelInfer(request)
    assert second.raw_output_contents[0] == first.raw_output_contents[0] and second.model_version == "1"
    sb = stats(stub_b, "cached")
    assert sb.execution_count == 0 and sb.inference_stats.cache_hit.count == 1 and sb.inference_stats.success.count == 1
    assert sb.inference_stats.cache_hit.ns > 0
    stub_b.ModelInfer(request)  # now from b's own memory
    assert hits(b, "cached", "redis") == 1 and hits(b, "cached", "local") == 1
    rest = requests.get(f"{b.http_url}/v2/models/cached/stats", timeout=5).json()["model_stats"][0]["inference_stats"]
    assert rest["cache_hit"]["count"] == 2 and rest["cache_miss"]["count"] == 0
    # a model that did not opt in is never cached
    for _ in range(2):
        stub_a.ModelInfer(infer_request("plain"))
    assert stats(stub_a, "plain").execution_count == 2 and stats(stub_a, "plain").inference_stats.cache_hit.count == 0


def test_classes_are_made_per_request_from_the_cached_tensor_never_taken_from_another_answer(pair):
    """The cache holds the model's tensors and a classification request's classes are made after it (tritonclient's
    class_count): a plain answer cached first serves a class_count request as classes, and a class_count request
    cached first leaves a plain one its tensor."""
    a, _, (stub_a, _) = pair
    client = tc.InferenceServerClient(a.grpc_address)
    try:
        for counts, base in (((0, 3), 300.0), ((3, 0), 400.0)):  # fresh inputs: nothing cached for them yet
            x = (np.arange(16, dtype=np.float32) / 4 + base).reshape(1, 16)  # "cached" answers x + 1
            inp = tc.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            before = stats(stub_a, "cached").inference_stats
            answers = [client.infer("cached", [inp], outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=k)])
                       for k in counts]
            after = stats(stub_a, "cached").inference_stats
            assert (after.cache_miss.count - before.cache_miss.count, after.cache_hit.count - before.cache_hit.count) \
                == (1, 1)
            for k, answer in zip(counts, answers):
                if k:
                    assert answer.get_output("OUTPUT0").datatype == "BYTES"
                    assert answer.as_numpy("OUTPUT0").tolist() == [[b"%.6f:%d" % (x[0, i] + 1, i) for i in (15, 14, 13)]]
                else:
                    np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), x + 1)
    finally:
        client.close()


def test_the_same_bytes_in_another_shape_is_another_entry(pair):
    a, b, (stub_a, _) = pair
    data = np.arange(4, dtype=np.float32).tobytes()
    shapes = ([1, 4], [2, 2], [1, 4])
    replies = []
    for shape in shapes:
        request = pb.ModelInferRequest(model_name="flex")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=shape)
        request.raw_input_contents.append(data)
        replies.append(stub_a.ModelInfer(request))
    assert [list(r.outputs[0].shape) for r in replies] == [list(s) for s in shapes]
    s = stats(stub_a, "flex")
    assert s.execution_count == 2 and s.inference_stats.cache_miss.count == 2 and s.inference_stats.cache_hit.count == 1


def test_bytes_answers_count_their_elements_against_the_local_tiers_bound(pair):
    a, _, (stub_a, _) = pair

    def local_bytes() -> float:
        return scrape_metrics(a.metrics_url)[("fleetserve_response_cache_local_bytes", frozenset())]

    before = local_bytes()
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1])
    request.inputs[0].contents.bytes_contents.append(b"x" * 256 * 1024)
    stub_a.ModelInfer(request)
    assert stats(stub_a, "text").inference_stats.cache_miss.count == 1
    # numpy's nbytes of an object array counts 8-byte pointers: a 256 KiB answer weighed 8 bytes, so the
    # tier held many times --response-cache-local-bytes and sent answers over 16 MiB to Redis
    assert local_bytes() - before == 4 + 256 * 1024


def test_entries_expire_after_the_models_ttl_in_redis_and_in_memory(pair):
    a, b, (stub_a, stub_b) = pair
    request = infer_request("short", value=5.0)
    stub_a.ModelInfer(request)
    stub_a.ModelInfer(request)
    assert stats(stub_a, "short").execution_count == 1 and hits(a, "short", "local") == 1
    time.sleep(1.2)
    stub_b.ModelInfer(request)  # b never saw it: the Redis entry has expired, so b computes it
    assert stats(stub_b, "short").execution_count == 1
    time.sleep(0.1)  # b's write to Redis lands
    stub_a.ModelInfer(request)  # a's memory has expired too: a takes b's fresh answer from Redis
    assert stats(stub_a, "short").execution_count == 1 and hits(a, "short", "redis") == 1


def test_identical_concurrent_misses_run_the_model_once(pair):
    a, b, (stub_a, _) = pair
    request = infer_request("slow", value=0.5, features=1024)
    futures = [stub_a.ModelInfer.future(request, timeout=10) for _ in range(16)]
    replies = [f.result() for f in futures]
    assert len({r.raw_output_contents[0] for r in replies}) == 1
    s = stats(stub_a, "slow")
    assert s.execution_count == 1 and s.inference_count == 1
    assert s.inference_stats.cache_miss.count == 1 and s.inference_stats.cache_hit.count == 15
    assert hits(a, "slow", "inflight") >= 1  # some waited for the first one's answer rather than memory


def test_a_fleet_replica_exports_every_fleet_family_and_the_readme_lists_them(pair):
    a, _, _ = pair
    with urlopen(a.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name, kind in FLEET_FAMILIES:
        assert re.search(rf"^# TYPE {name}(_total)? {kind}$", text, re.M), name
        assert name in readme, f"README.md does not document {name}"
    assert re.search(r"^fleetserve_redis_up 1\.0$", text, re.M)


def test_a_request_waiting_on_redis_while_its_version_is_swapped_out_is_answered_by_the_new_one(tmp_path):
    """A cache lookup is awaited before the request queues: a version retired meanwhile must not fail it."""
    repo = write_model_repository(tmp_path, {"cached": ModelSpec(write_add_constant_model, config=CACHED)})
    with RedisServer() as redis:
        args = fleet_args(redis.url, "a", redis_timeout_s=5.0)
        (server,) = start_replicas([(repo, [*args, "--model-control-mode", "poll", "--repository-poll-secs", "0.2"])])
        channel = grpc.insecure_channel(server.grpc_address)
        try:
            stub = rpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(infer_request("cached")).model_version == "1"
            assert redis.proc is not None
            os.kill(redis.proc.pid, signal.SIGSTOP)  # lookups now wait (up to the Redis timeout)
            try:
                waiting = [stub.ModelInfer.future(infer_request("cached", value=10.0 + i), timeout=30) for i in range(4)]
                time.sleep(0.5)  # they have resolved version 1 (new inputs: no answer in memory) and wait on Redis
                write_add_constant_model(repo / "cached" / "2", constant=2.0)

                def retired() -> bool:
                    index = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
                    return {m.version for m in index if m.name == "cached"} == {"2"}

                deadline = time.monotonic() + 20
                while not retired() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert retired(), server.log
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            for i, future in enumerate(waiting):
                reply = future.result()  # before the fix: UNAVAILABLE "version 1 is not accepting requests"
                assert reply.model_version == "2"
                assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [12.0 + i] * 16
        finally:
            channel.close()
            server.stop()


def _write_external_weights_model(version_dir: Path, constant: float) -> None:
    """add_constant with its weights in ``weights.bin`` beside model.onnx (ONNX external data): new weights
    change weights.bin only, model.onnx stays byte for byte the same."""
    import onnx

    path = write_add_constant_model(version_dir, constant=constant)
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)


def test_new_weights_beside_an_unchanged_model_file_never_meet_old_answers(tmp_path):
    repo = write_model_repository(tmp_path / "repo", {
        "cached": ModelSpec(partial(_write_external_weights_model, constant=1.0), config=CACHED)})
    with RedisServer() as redis:
        args = fleet_args(redis.url, "a")
        (server,) = start_replicas([(repo, [*args, "--model-control-mode", "poll", "--repository-poll-secs", "0.2"])])
        channel = grpc.insecure_channel(server.grpc_address)
        try:
            stub = rpc.GRPCInferenceServiceStub(channel)

            def answer(value: float) -> list[float]:
                reply = stub.ModelInfer(infer_request("cached", value=value))
                return np.frombuffer(reply.raw_output_contents[0], np.float32).tolist()

            assert answer(0.0) == [1.0] * 16
            _write_external_weights_model(tmp_path / "new", constant=2.0)
            assert (tmp_path / "new" / "model.onnx").read_bytes() == (repo / "cached" / "1" / "model.onnx").read_bytes()
            os.replace(tmp_path / "new" / "weights.bin", repo / "cached" / "1" / "weights.bin")
            deadline = time.monotonic() + 20
            probe = 100.0
            while answer(probe) != [probe + 2.0] * 16 and time.monotonic() < deadline:  # reloaded (a new input)
                probe += 1.0
                time.sleep(0.05)
            assert answer(probe) == [probe + 2.0] * 16, server.log
            assert answer(0.0) == [2.0] * 16  # before the fix: [1.0] * 16, the old weights' answer from the cache
        finally:
            channel.close()
            server.stop()


def test_shared_memory_and_the_cache(pair):
    """An output in a shared-memory region never comes from the cache nor goes into it: the model runs each
    time and writes the region. Inputs in a region may hit: the key hashes the bytes read from it."""
    import uuid

    import tritonclient.grpc as tc
    import tritonclient.utils.shared_memory as shm

    a, _, (stub_a, _) = pair
    key = f"/fleetserve-test-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("cache", key, 128, create_only=True)
    client = tc.InferenceServerClient(a.grpc_address)
    try:
        client.register_system_shared_memory("cache", key, 128)
        shm.set_shared_memory_region(handle, [np.full((1, 16), 2.0, np.float32)])
        x = tc.InferInput("INPUT0", [1, 16], "FP32")
        x.set_shared_memory("cache", 64)
        out = tc.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("cache", 64, offset=64)
        for _ in range(2):
            shm.set_shared_memory_region(handle, [np.zeros((1, 16), np.float32)], offset=64)
            client.infer("shared", [x], outputs=[out])
            assert shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=64).tolist() == [[3.0] * 16]
        s = stats(stub_a, "shared")
        assert s.execution_count == 2 and s.inference_stats.cache_hit.count == 0
        assert s.inference_stats.cache_miss.count == 0
        answers = [client.infer("shared", [x]).as_numpy("OUTPUT0").tolist() for _ in range(2)]
        shm.set_shared_memory_region(handle, [np.full((1, 16), 7.0, np.float32)])  # other bytes: another entry
        answers.append(client.infer("shared", [x]).as_numpy("OUTPUT0").tolist())
        assert answers == [[[3.0] * 16], [[3.0] * 16], [[8.0] * 16]]
        s = stats(stub_a, "shared")
        assert s.inference_stats.cache_miss.count == 2 and s.inference_stats.cache_hit.count == 1
    finally:
        client.unregister_system_shared_memory()
        client.close()
        shm.destroy_shared_memory_region(handle)
