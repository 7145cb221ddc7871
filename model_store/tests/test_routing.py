"""Traffic splits and the router: deterministic per request id, proportional, O(1)."""

from __future__ import annotations

import pytest

from model_store.routing import (
    BUCKETS,
    TrafficRouter,
    bucket_of,
    check_split,
    describe_split,
    make_split,
    routing_key,
)


def test_make_split_takes_percentages_with_basis_point_resolution():
    assert make_split({1: 90, 2: 10}) == ((1, 9000), (2, 1000))
    assert make_split({2: 0.5, 1: 99.5}) == ((1, 9950), (2, 50))
    assert describe_split(make_split({1: 90, 2: 10})) == "v1 90% · v2 10%"
    assert describe_split(()) == "version policy"


@pytest.mark.parametrize("shares, message", [
    ({}, "at least one"), ({1: 90}, "add up to 90%"), ({1: 100, 2: 0}, "outside"), ({1: 100.5}, "outside"),
    ({1: 60, 2: 50}, "add up to 110%"),
])
def test_make_split_refuses_bad_shares(shares, message):
    with pytest.raises(ValueError, match=message):
        make_split(shares)


def test_check_split_refuses_what_does_not_cover_every_bucket():
    assert check_split([[2, 1000], [1, 9000]]) == ((1, 9000), (2, 1000))
    assert check_split([]) == ()
    for bad in ([[1, 9000]], [[1, 5000], [1, 5000]], [[1, 10001], [2, -1]]):
        with pytest.raises(ValueError):
            check_split(bad)


def test_the_same_id_always_gets_the_same_version_and_the_shares_hold():
    router = TrafficRouter()
    router.set("m", make_split({1: 90, 2: 10}))
    ids = [f"request-{i}" for i in range(20_000)]
    first = [router.version_for("m", i) for i in ids]
    assert first == [router.version_for("m", i) for i in ids]  # retries land on the same version
    share = first.count("2") / len(first)
    assert 0.09 < share < 0.11
    # the bucket is a pure function of the id: the same on every replica and in every process
    assert bucket_of("request-1") == bucket_of("request-1") and 0 <= bucket_of("x") < BUCKETS


def test_requests_without_an_id_are_split_at_random():
    router = TrafficRouter()
    router.set("m", make_split({1: 50, 2: 50}))
    got = [router.version_for("m", "") for _ in range(4000)]
    assert 0.45 < got.count("1") / len(got) < 0.55


def test_a_single_version_and_no_split():
    router = TrafficRouter()
    assert router.version_for("m", "a") == ""  # no split: the registry's latest ready version
    router.set("m", ((3, BUCKETS),))
    assert router.version_for("m", "a") == "3" and router.split("m") == ((3, BUCKETS),)
    router.clear("m")
    assert router.version_for("m", "a") == "" and router.split("m") == ()


def test_a_request_of_a_sequence_is_bucketed_by_its_sequence():
    router = TrafficRouter()
    router.set("m", make_split({1: 50, 2: 50}))
    for sequence_id in (7, "session-a"):
        keys = {routing_key(f"request-{i}", {"sequence_id": sequence_id, "sequence_start": i == 0}) for i in range(50)}
        assert len(keys) == 1  # one bucket for all of the sequence, whatever its requests' ids
        assert len({router.version_for("m", key) for key in keys}) == 1
    assert routing_key("r-1", {"sequence_id": 0}) == routing_key("r-1", None) == "r-1"  # 0: no sequence
