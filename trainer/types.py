"""The trainer's shared value types: a leaf module (standard library only).

Strategies, pacing policies, the loop and the records all speak of a worker's progress in a
round and of what it did in a round; defining both here, below every other trainer module,
keeps the import graph free of cycles (tests/unit/test_import_cycles.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LocalProgress:
    """A worker's progress in the current round, as the State Server sees it (Alg. 2's k, c, te)."""

    k: int = 0  # local iterations in this round
    c: float = 0.0  # seconds per batch (moving average, emulated slowdown included)
    te: float = field(default_factory=time.time)  # Unix time the last iteration finished


@dataclass
class RoundStats:
    """What one worker did in one round; the timers are seconds."""

    local_iterations: int = 0
    samples: int = 0
    bytes_pushed: int = 0
    bytes_pulled: int = 0
    compute_s: float = 0.0
    wait_s: float = 0.0
    query_s: float = 0.0
    comm_s: float = 0.0
    eval_s: float = 0.0
    server_bytes: list[int] = field(default_factory=list)  # pushed + pulled, per server
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, key: str, by: int = 1) -> None:
        """Add ``by`` to the counter ``key`` of the round's extra fields."""
        self.extra[key] = self.extra.get(key, 0) + by

    def count_server_bytes(self, per_server: list[int]) -> None:
        """Add one exchange's bytes (pushed + pulled) on each parameter server."""
        if not self.server_bytes:
            self.server_bytes = [0] * len(per_server)
        self.server_bytes = [a + b for a, b in zip(self.server_bytes, per_server, strict=True)]

    def as_record(self, round_no: int, elapsed: float) -> dict[str, Any]:
        """The JSON object of this round, with ``round`` and ``time`` first."""
        body = asdict(self)
        extra = body.pop("extra")
        if not body["server_bytes"]:  # no KVStore (standalone training)
            del body["server_bytes"]
        for key in ("compute_s", "wait_s", "query_s", "comm_s", "eval_s"):
            body[key] = round(body[key], 6)
        return {"round": round_no, "time": round(elapsed, 6), **body, **extra}
