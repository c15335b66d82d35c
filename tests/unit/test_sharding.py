"""Which parameter server holds which bytes (trainer/sharding.py), against hand-computed sizes."""

from __future__ import annotations

import mxnet as mx
import pytest

from models import get_model
from trainer import loop, sharding

# LeNet on 28 x 28 digits, by hand: conv 20x1x5x5 (+20), conv 50x20x5x5 (+50), then
# 28 -> 24 -> 12 -> 8 -> 4, so dense 128 x (50*4*4) (+128) and the output 10 x 128 (+10)
LENET_ELEMENTS = (500, 20, 25_000, 50, 102_400, 128, 1_280, 10)
FLOAT32 = 4


def lenet_arrays() -> list[tuple[int, int, int]]:
    return [(key, n, FLOAT32) for key, n in enumerate(LENET_ELEMENTS)]


def test_the_hand_computed_sizes_are_lenets() -> None:
    net = get_model("lenet")
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    sizes = tuple(p.data().size for p in net.collect_params().values())
    assert sizes == LENET_ELEMENTS


def test_one_server_holds_everything() -> None:
    found = sharding.partition(lenet_arrays(), servers=1)
    assert found.per_server == (sum(LENET_ELEMENTS) * FLOAT32,) == (517_552,)
    assert found.balance == 1.0


def test_two_servers_take_the_even_and_the_odd_keys() -> None:
    # 9973 is odd, so (key * 9973) % 2 == key % 2: every weight on server 0, every bias on 1
    found = sharding.partition(lenet_arrays(), servers=2)
    assert found.per_server == ((500 + 25_000 + 102_400 + 1_280) * 4, (20 + 50 + 128 + 10) * 4)
    assert found.balance == pytest.approx(832 / 516_720)


def test_the_split_bound_halves_the_big_layers() -> None:
    # keys 2 (25,000) and 4 (102,400) reach the bound: half of each on either server
    found = sharding.partition(lenet_arrays(), servers=2, bound=20_000)
    assert found.per_server == (
        (500 + 12_500 + 51_200 + 1_280) * 4,
        (20 + 12_500 + 51_200 + 50 + 128 + 10) * 4,
    )
    assert found.balance > 0.97
    assert found.total == sum(LENET_ELEMENTS) * 4


def test_four_servers_follow_key_times_9973_mod_4() -> None:
    # 9973 % 4 == 1, so key k goes to server k % 4
    found = sharding.partition(lenet_arrays(), servers=4)
    expected = [0] * 4
    for key, n in enumerate(LENET_ELEMENTS):
        expected[key % 4] += n * 4
    assert found.per_server == tuple(expected)


def test_a_split_rounds_halves_away_from_zero() -> None:
    # 5 elements over 2 servers: round(2.5) = 3 in C, so 3 then 2 (Python's round would say 2)
    assert sharding.key_bytes(0, 5, 1, servers=2, bound=5) == [3, 2]
    assert sharding.key_bytes(0, 7, 4, servers=3, bound=1) == [2 * 4, 3 * 4, 2 * 4]


def test_an_array_just_below_the_bound_stays_whole() -> None:
    assert sharding.key_bytes(3, 99, 4, servers=2, bound=100) == [0, 396]
    assert sharding.key_bytes(3, 100, 4, servers=2, bound=100) == [200, 200]


@pytest.mark.parametrize("servers", [1, 2, 3, 4, 8, 64])
def test_the_trainers_reserved_keys_are_distinct_and_placeable(servers: int) -> None:
    reserved = [loop.RESUME_KEY, loop.RESUME_VOTE_KEY, loop.DEVICE_UNIT_KEY, loop.START_KEY]
    assert len(set(reserved)) == len(reserved)
    for key in reserved:
        assert 0 <= sharding.server_of_key(key, servers) < servers


def test_a_key_whose_product_wraps_negative_is_refused() -> None:
    # 300,000 * 9973 = 2,991,900,000 > 2**31 - 1: a C int wraps to -1,303,067,296, whose C
    # remainder by 3 is -1 (by 2 it is 0, a real server)
    with pytest.raises(sharding.UnplaceableKeyError, match="300000"):
        sharding.server_of_key(300_000, 3)
    assert sharding.server_of_key(300_000, 2) == 0


def test_the_bound_and_the_server_count_come_from_the_environment() -> None:
    assert sharding.bound_from({}) == sharding.DEFAULT_BIGARRAY_BOUND == 1_000_000
    assert sharding.bound_from({"MXNET_KVSTORE_BIGARRAY_BOUND": "20000"}) == 20_000
    assert sharding.servers_from({}) == 1
    assert sharding.servers_from({"DMLC_NUM_SERVER": "4"}) == 4


def test_a_versioned_key_must_stay_whole_on_one_server(monkeypatch) -> None:
    from trainer.cluster import ClusterConfigError
    from trainer.federated import check_versions_stay_whole

    monkeypatch.setenv("DMLC_NUM_SERVER", "2")
    monkeypatch.setenv(sharding.BOUND_VAR, "20000")
    with pytest.raises(ClusterConfigError, match="--bigarray-bound 102402 or more"):
        check_versions_stay_whole("FedAsync", [501, 102_401, 11])
    check_versions_stay_whole("FedAsync", [19_999, 11])  # below the bound: whole
    monkeypatch.setenv("DMLC_NUM_SERVER", "1")
    check_versions_stay_whole("FedAsync", [10**7])  # one server: nothing is split
