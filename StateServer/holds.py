"""The held requests of the non-blocking protocol, ordered by the time they must be answered.

A worker's ``hold`` request stays open until Alg. 2 says it must synchronise (its deadline,
computed by :meth:`StateServer.scheduler.Scheduler.deadline`) or until it has been held for
``max_hold_s`` (then it is answered compute and the worker sends it again). At most one
request per rank is held; a newer one supersedes it. Only the dispatcher thread uses this
(no locks): it asks :meth:`HoldBook.next_time` how long it may sleep, and :meth:`pop_due`
for the requests to answer.

Deadlines live in a heap with lazy deletion (a changed deadline pushes a new entry and the
old one is skipped when it surfaces), so a change costs O(log n) and a timer tick O(1).
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_HOLD_S = 10.0


@dataclass(slots=True)
class Held:
    """One open request: its job, when it was taken, its deadline and its last heap stamp."""

    rank: int
    job: Any
    since: float  # server time the dispatcher took the request
    deadline: float  # server time after which the answer is sync (inf: not known yet)
    expires: float  # since + max_hold_s
    changed: float  # server time the deadline was last set
    stamp: int = 0

    @property
    def fire_at(self) -> float:
        """When the dispatcher must look at it: its deadline or its expiry, the earlier."""
        return min(self.deadline, self.expires)


class HoldBook:
    """Open requests by rank, plus a heap of the times they must be answered."""

    def __init__(self, max_hold_s: float = DEFAULT_MAX_HOLD_S) -> None:
        if not max_hold_s > 0.0:
            raise ValueError(f"max_hold_s must be positive, got {max_hold_s!r}")
        self.max_hold_s = float(max_hold_s)
        self._by_rank: dict[int, Held] = {}
        self._heap: list[tuple[float, int, int]] = []  # (fire_at, stamp, rank)
        self._stamps = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_rank)

    def __contains__(self, rank: object) -> bool:
        return rank in self._by_rank

    def ranks(self) -> list[int]:
        """The ranks with an open request."""
        return list(self._by_rank)

    def add(self, rank: int, job: Any, deadline: float, now: float) -> Held | None:
        """Hold ``job`` for ``rank``; returns the request it supersedes (answer it), if any."""
        old = self._by_rank.pop(rank, None)
        held = Held(rank, job, now, deadline, now + self.max_hold_s, now)
        self._by_rank[rank] = held
        self._push(held)
        return old

    def set_deadline(self, rank: int, deadline: float, now: float) -> None:
        """A changed deadline of ``rank``'s open request (no-op when it did not change)."""
        held = self._by_rank.get(rank)
        if held is not None and held.deadline != deadline:
            held.deadline, held.changed = deadline, now
            self._push(held)

    def next_time(self) -> float | None:
        """The earliest time a request must be answered, or None when nothing is held."""
        heap = self._heap
        while heap:
            fire_at, stamp, rank = heap[0]
            held = self._by_rank.get(rank)
            if held is not None and held.stamp == stamp:
                return fire_at
            heapq.heappop(heap)  # superseded, answered or re-stamped
        return None

    def pop_due(self, now: float) -> list[Held]:
        """Remove and return every request whose deadline or expiry is ``<= now``."""
        due = []
        while True:
            fire_at = self.next_time()
            if fire_at is None or fire_at > now:
                return due
            _, _, rank = heapq.heappop(self._heap)
            due.append(self._by_rank.pop(rank))

    def pop(self, rank: int) -> Held | None:
        """Remove ``rank``'s open request (its heap entry is skipped later)."""
        return self._by_rank.pop(rank, None)

    def pop_all(self) -> list[Held]:
        """Remove every open request (a new run, or the server stops)."""
        held = list(self._by_rank.values())
        self._by_rank.clear()
        self._heap.clear()
        return held

    def _push(self, held: Held) -> None:
        held.stamp = next(self._stamps)
        fire_at = held.fire_at
        if not math.isnan(fire_at):
            heapq.heappush(self._heap, (fire_at, held.stamp, held.rank))
