"""Rank 0's progress on the launcher's console, read from its records as they appear."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from trainer import layout
from trainer.records import RecordTail


class EvaluationPrinter:
    """Prints rank 0's evaluation records as they appear (at most one line per ``every`` s).

    Rank 0's records are looked for in the folders of ``hosts`` (default: this machine); a
    remote rank 0's records are read once they have been copied back, at the end.
    """

    def __init__(
        self, mode_dir: str, label: str, every: float = 2.0, hosts: Sequence[str] = ()
    ) -> None:
        self.mode_dir = mode_dir
        self.label = label
        self.every = every
        self.hosts = list(hosts) or [socket.gethostname()]
        self.tail: RecordTail | None = None
        self.last_printed = -float("inf")
        self.pending: dict | None = None
        self.last_acc: float | None = None
        self.rounds = 0

    def poll(self, final: bool = False) -> None:
        """Read new records; print the newest evaluation when due (always when ``final``)."""
        for rec in self._new_records():
            self.rounds = rec.get("round", self.rounds)
            if "test_acc" in rec:
                self.last_acc, self.pending = rec["test_acc"], rec
        due = final or time.monotonic() - self.last_printed >= self.every
        if self.pending is not None and due:
            rec, self.pending = self.pending, None
            self.last_printed = time.monotonic()
            rnd, at = rec.get("eval_round", rec["round"]), rec.get("eval_time", rec["time"])
            print(
                f"[{self.label}] round {rnd:>5}  t={at:7.1f}s  "
                f"test acc {rec['test_acc']:.3f}  loss {rec.get('test_loss', 0):.4f}",
                flush=True,
            )

    def _new_records(self) -> list[dict]:
        if self.tail is None:
            rank0 = [
                w for h in self.hosts for w in layout.worker_dirs(self.mode_dir, h) if not w.rank
            ]
            if not rank0:
                return []
            self.tail = RecordTail(rank0[0].rounds)
        return self.tail.read_new()

    def finished(self, seconds: float) -> None:
        """The closing line of a mode."""
        self.poll(final=True)
        acc = "n/a" if self.last_acc is None else f"{self.last_acc:.3f}"
        print(
            f"[{self.label}] finished: {self.rounds} rounds in {seconds:.1f} s, "
            f"last test acc {acc}",
            flush=True,
        )
