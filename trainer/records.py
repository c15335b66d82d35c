"""Per-worker run records: meta.json once, then one JSON line per round (docs/log-format.md)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any


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
    extra: dict[str, Any] = field(default_factory=dict)

    def as_record(self, round_no: int, elapsed: float) -> dict[str, Any]:
        """The JSON object of this round, with ``round`` and ``time`` first."""
        body = asdict(self)
        extra = body.pop("extra")
        for key in ("compute_s", "wait_s", "query_s", "comm_s", "eval_s"):
            body[key] = round(body[key], 6)
        return {"round": round_no, "time": round(elapsed, 6), **body, **extra}


class RunLog:
    """Writes meta.json and appends flushed lines to rounds.jsonl."""

    def __init__(self, folder: str, meta: dict[str, Any]) -> None:
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.started_at = time.time()
        self.meta = {**meta, "started_at": self.started_at}
        tmp = os.path.join(folder, "meta.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(self.meta, fh, indent=1)
        os.replace(tmp, os.path.join(folder, "meta.json"))
        self._rounds: IO[str] = open(os.path.join(folder, "rounds.jsonl"), "w")

    def elapsed(self) -> float:
        """Seconds since this worker started training."""
        return time.time() - self.started_at

    def write(self, record: dict[str, Any]) -> None:
        """Append one round and flush it, so a killed process loses at most one line."""
        self._rounds.write(json.dumps(record) + "\n")
        self._rounds.flush()

    def close(self) -> None:
        self._rounds.close()


class RecordTail:
    """Reads the records appended to a rounds.jsonl since the last call (complete lines only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        """The records written since the previous call; a half-written last line waits."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records
