"""Which parameter server holds which bytes: MXNet 1.9's key partition, as plain Python.

A ``dist`` KVStore worker sends each key to the servers by one rule (``EncodeDefaultKey`` in
MXNet 1.9's ``kvstore_dist.h``; the facts carried over, not the code):

* an array of fewer than ``MXNET_KVSTORE_BIGARRAY_BOUND`` elements (default 1,000,000) goes
  whole to server ``(key * 9973) % servers``, computed in C ``int`` arithmetic (32 bits,
  wrapping; the remainder takes the sign of the dividend);
* a larger array is split over every server: server ``i`` gets elements
  ``round(n / servers * i)`` to ``round(n / servers * (i + 1))`` (C ``round``: halves away
  from zero).

A push and a pull of a key move the same bytes to and from the same servers, so the bytes a
worker sends each server per exchange follow from its keys and their sizes alone. Standard
library only: the launcher, summary.py and the benchmark use it without MXNet.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

BOUND_VAR = "MXNET_KVSTORE_BIGARRAY_BOUND"
DEFAULT_BIGARRAY_BOUND = 1_000_000  # elements; MXNet 1.9's default
KEY_SPREAD = 9973  # MXNet's multiplier for a small key's server
SERVERS_VAR = "DMLC_NUM_SERVER"


class UnplaceableKeyError(ValueError):
    """A key MXNet cannot place with this many servers (its C ``int`` product wraps to a
    negative number, which would index a server before the first)."""


def _c_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _c_round(x: float) -> int:
    """C's ``round`` for the non-negative values used here: halves away from zero."""
    return math.floor(x + 0.5)


def server_of_key(key: int, servers: int) -> int:
    """The server of a key whose array stays below the bound."""
    product = _c_int32(key * KEY_SPREAD)
    server = int(math.fmod(product, servers))  # C's %: the sign of the dividend
    if server < 0:
        raise UnplaceableKeyError(
            f"KVStore key {key} cannot be placed on {servers} servers by MXNet "
            f"({key} * {KEY_SPREAD} overflows a C int to {product})"
        )
    return server


def key_bytes(key: int, elements: int, itemsize: int, servers: int, bound: int) -> list[int]:
    """Bytes of one array (``elements`` of ``itemsize`` bytes) on each of ``servers``."""
    shares = [0] * servers
    if elements < bound:
        shares[server_of_key(key, servers)] = elements * itemsize
        return shares
    for i in range(servers):
        part = _c_round(elements / servers * (i + 1)) - _c_round(elements / servers * i)
        shares[i] = part * itemsize
    return shares


@dataclass(frozen=True)
class Partition:
    """The bytes one exchange of some keys puts on each server."""

    per_server: tuple[int, ...]
    bound: int

    @property
    def servers(self) -> int:
        return len(self.per_server)

    @property
    def total(self) -> int:
        return sum(self.per_server)

    @property
    def balance(self) -> float:
        """Smallest / largest server's bytes (1.0: even; one server is even)."""
        largest = max(self.per_server)
        return min(self.per_server) / largest if largest else 1.0


def partition(
    arrays: Sequence[tuple[int, int, int]], servers: int, bound: int = DEFAULT_BIGARRAY_BOUND
) -> Partition:
    """The bytes on each server of ``(key, elements, itemsize)`` arrays."""
    if servers < 1:
        raise ValueError(f"servers must be at least 1, not {servers}")
    totals = [0] * servers
    for key, elements, itemsize in arrays:
        for i, share in enumerate(key_bytes(key, elements, itemsize, servers, bound)):
            totals[i] += share
    return Partition(tuple(totals), bound)


def bound_from(env: Mapping[str, str] = os.environ) -> int:
    """The split bound this process's MXNet uses."""
    text = env.get(BOUND_VAR, "")
    return int(text) if text.strip() else DEFAULT_BIGARRAY_BOUND


def servers_from(env: Mapping[str, str] = os.environ) -> int:
    """The cluster's number of servers (1 outside a cluster)."""
    text = env.get(SERVERS_VAR, "")
    return int(text) if text.strip() else 1
