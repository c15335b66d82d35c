"""Log folders of runs: read what a real run wrote, or write hand-made ones with known numbers.

The hand-made logs (``build_logs``) are what the tests of summary.py, draw.py and report.py
read. Every number is chosen so that each rate is exact in binary floating point, hence the
``==`` comparisons there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer import layout

NET = "lenet"

# --- what a real run wrote ------------------------------------------------------------------


def read_rounds(folder: str | os.PathLike[str]) -> list[dict]:
    """The records of one worker folder."""
    with open(os.path.join(folder, layout.ROUNDS_NAME)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def worker_folders(log_dir: str, network: str, mode_dir: str) -> dict[int, str]:
    """rank -> worker folder of one run."""
    found = {}
    for worker in layout.worker_dirs(layout.mode_dir(log_dir, network, mode_dir)):
        with open(worker.meta) as fh:
            found[json.load(fh)["rank"]] = str(worker.path)
    return found


def launched_pids(log_dir: str, network: str, mode_dir: str) -> dict[str, int]:
    """The pids launch.py recorded for one run."""
    with open(layout.process_dir(log_dir, network, mode_dir) / layout.PIDS_NAME) as fh:
        return json.load(fh)


def process_log_tails(log_dir: str, lines: int = 4) -> str:
    """The last ``lines`` lines of every process log under ``log_dir``, shortest first: what
    a failed launch's assertion message should lead with (CI shows only its start)."""
    tails = []
    for path in sorted(Path(log_dir, layout.PROCESSES_DIR).rglob("*.log")):
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
        tails.append(f"{path.name}: " + " | ".join(text))
    return "\n".join(sorted(tails, key=len)) or f"no process logs under {log_dir}"


# --- hand-made logs -------------------------------------------------------------------------


def rec(
    rnd: int,
    t: float,
    li: int,
    samples: int,
    push: int,
    pull: int,
    compute: float,
    acc: float | None = None,
) -> dict[str, Any]:
    """One rounds.jsonl record (test_acc / test_loss only when ``acc`` is given)."""
    record = {
        "round": rnd,
        "time": t,
        "local_iterations": li,
        "samples": samples,
        "bytes_pushed": push,
        "bytes_pulled": pull,
        "compute_s": compute,
        "wait_s": 0.0,
        "query_s": 0.0,
        "comm_s": 0.0,
        "eval_s": 0.0,
    }
    if acc is not None:
        record.update(test_acc=acc, test_loss=1.0 - acc)
    return record


def write_worker(
    base: Path,
    mode: str,
    host: str,
    device: str,
    rank: int,
    num_workers: int,
    slowdown: float,
    records: list[dict[str, Any]],
    tail: str = "",
) -> Path:
    """Write one worker folder; ``tail`` is appended raw after the records."""
    folder = base / NET / mode / host / f"{device}-rank{rank}"
    folder.mkdir(parents=True)
    meta = {
        "mode": mode.removesuffix("-niid"),
        "network": NET,
        "dataset": "digits",
        "split": "niid" if mode.endswith("-niid") else "iid",
        "rank": rank,
        "num_workers": num_workers,
        "host": host,
        "device": device,
        "slowdown": slowdown,
        "batch_size": 32,
        "lr": 0.05,
        "local_lr": 0.05,
        "global_lr": 1.0,
        "started_at": 1.7e9,
        "argv": ["main.py"],
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (folder / "rounds.jsonl").write_text(lines + tail)
    return folder


# One row per record: (mode, rank, host, device, slowdown, then rec()'s arguments).
IID_ROWS: list[tuple] = [
    ("esync", 0, "hostA", "cpu", 1.0, 1, 2.0, 4, 128, 1000, 1000, 1.5, 0.5),
    ("esync", 0, "hostA", "cpu", 1.0, 2, 4.0, 4, 128, 1000, 1000, 1.5, 0.9375),
    ("esync", 0, "hostA", "cpu", 1.0, 3, 8.0, 4, 128, 1000, 1000, 3.0, 0.875),
    ("esync", 1, "hostA", "cpu", 2.0, 1, 4.0, 2, 64, 1000, 1000, 2.0, None),
    ("esync", 1, "hostA", "cpu", 2.0, 2, 8.0, 2, 64, 1000, 1000, 2.0, None),
    ("esync", 2, "hostB", "gpu0", 4.0, 1, 16.0, 1, 32, 1000, 1000, 4.0, None),
    ("sync", 0, "hostA", "cpu", 1.0, 1, 8.0, 1, 32, 2000, 2000, 2.0, 0.5),
    ("sync", 0, "hostA", "cpu", 1.0, 2, 16.0, 1, 32, 2000, 2000, 2.0, 0.75),
    ("sync", 0, "hostA", "cpu", 1.0, 3, 32.0, 1, 32, 2000, 2000, 2.0, 0.9375),
    ("sync", 1, "hostB", "cpu", 2.0, 1, 32.0, 1, 32, 2000, 2000, 8.0, None),
    ("async", 0, "hostA", "cpu", 1.0, 1, 4.0, 1, 32, 100, 100, 1.0, 0.5),
    ("local", 0, "hostA", "cpu", 1.0, 1, 1.0, 1, 32, 0, 0, 0.5, None),
    ("local", 0, "hostA", "cpu", 1.0, 2, 2.0, 1, 32, 0, 0, 0.5, 0.96875),
]
NIID_ROWS: list[tuple] = [
    ("esync-niid", 0, "hostA", "cpu", 1.0, 1, 2.0, 2, 64, 500, 500, 1.0, 0.25),
    ("esync-niid", 0, "hostA", "cpu", 1.0, 2, 4.0, 2, 64, 500, 500, 1.0, 0.5),
    ("esync-niid", 1, "hostA", "cpu", 2.0, 1, 4.0, 1, 32, 500, 500, 2.0, None),
    ("sync-niid", 0, "hostA", "cpu", 1.0, 1, 8.0, 1, 32, 1000, 1000, 1.0, 0.5),
]


def _break_esync_rank0(base: Path) -> None:
    """esync's rank 0 was killed mid-write (a truncated last line) and its file has blank
    lines after the first record."""
    path = base / NET / "esync" / "hostA" / "cpu-rank0" / "rounds.jsonl"
    text = path.read_text().replace("\n", "\n\n   \n", 1) + '{"round": 4, "time": 9.'
    path.write_text(text)


def build_logs(base: Path, niid: bool = True) -> Path:
    """esync (3 workers, 2 hosts), sync, async, local and, if ``niid``, esync/sync-niid;
    returns the network folder."""
    workers: dict[tuple[str, int], tuple[tuple, list[dict[str, Any]]]] = {}
    for mode, rank, host, device, slowdown, *args in IID_ROWS + (NIID_ROWS if niid else []):
        _, records = workers.setdefault((mode, rank), ((host, device, slowdown), []))
        records.append(rec(*args))
    for (mode, rank), ((host, device, slowdown), records) in workers.items():
        num_workers = sum(1 for m, _ in workers if m == mode)
        write_worker(base, mode, host, device, rank, num_workers, slowdown, records)
    _break_esync_rank0(base)
    return base / NET
