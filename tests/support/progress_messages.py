"""Progress messages as the workers send them (wire form), and malformed ones with the status
and error the State Server must answer: shared by the store's tests and the route's."""

from __future__ import annotations

import copy
import json
from typing import Any

import config

NOW = 1_800_000_000.0


META = {
    "mode": "esync",
    "network": "lenet",
    "split": "iid",
    "rank": 0,
    "num_workers": 2,
    "host": "node-a",
    "device": "cpu",
    "slowdown": 1.0,
}


def record(rnd: int, **over: object) -> dict:
    """A rounds.jsonl record as trainer/records.py writes it."""
    rec = {
        "round": rnd,
        "time": 0.5 * rnd,
        "local_iterations": 3,
        "samples": 192,
        "bytes_pushed": 1000,
        "bytes_pulled": 1000,
        "compute_s": 0.3,
        "wait_s": 0.05,
        "query_s": 0.02,
        "comm_s": 0.1,
        "eval_s": 0.03,
        "slowdown": 1.0,
        "emulated_wait_s": 0.0,
        "checksum": "abcd1234",
    }
    rec.update(over)
    return rec


def message(rank: int = 0, at: tuple[int, ...] = (1,), **over: object) -> dict:
    """A valid worker message (wire form) with the records of the rounds ``at``."""
    msg = {
        "msg_type": "progress",
        "run": "lenet/esync",
        "mode": "esync",
        "num_workers": 2,
        "rank": rank,
        "host": f"node-{rank}",
        "device": "cpu",
        "started": NOW - 100,
        "state": "running",
        "totals": {
            "rounds": max(at, default=0),
            "samples": 192 * max(at, default=0),
            "compute_s": 3.0,
            "wait_s": 0.5,
            "query_s": 0.2,
            "comm_s": 1.0,
            "eval_s": 0.3,
        },
        "records": [
            {"round": r, "time": 0.5 * r, "local_iterations": 3, "samples": 192, "compute_s": 0.3}
            for r in at
        ],
    }
    msg.update(over)
    return msg


VALID = json.dumps(message()).encode()


def alter(path: str, value: object) -> bytes:
    """The valid message with ``path`` (``a.b`` or ``records.0.x``) set to ``value``, or
    removed when ``value`` is ``...``."""
    obj = copy.deepcopy(message())
    *parents, leaf = path.split(".")
    target: Any = obj
    for key in parents:
        target = target[int(key) if isinstance(target, list) else key]
    index = int(leaf) if isinstance(target, list) else leaf
    if value is ...:
        del target[index]
    else:
        target[index] = value
    return json.dumps(obj).encode()


MALFORMED = [  # (id, body, status, a fragment of the error)
    ("not-json", b"{", 400, "not valid JSON"),
    ("nan", VALID.replace(b'"started": ', b'"started": NaN, "x": '), 400, "NaN is not a number"),
    ("infinity", b'{"msg_type": "progress", "started": Infinity}', 400, "Infinity is not"),
    ("duplicate-key", b'{"msg_type": "progress", "msg_type": "run"}', 400, "duplicate key"),
    ("not-utf8", b'{"host": "\xff"}', 400, "not UTF-8"),
    ("empty", b"  ", 400, "body is empty"),
    ("array", b"[1, 2]", 400, "must be a JSON object"),
    ("deep", b"[" * 20_000 + b"]" * 20_000, 400, "JSON"),
    ("too-big", b" " * (config.PROGRESS_MAX_BODY_BYTES + 1), 413, "exceeds"),
    ("no-msg-type", alter("msg_type", ...), 400, "'msg_type' must be progress or run"),
    ("bad-msg-type", alter("msg_type", "query"), 400, "'msg_type' must be progress or run"),
    ("missing-field", alter("rank", ...), 400, "missing field(s) 'rank'"),
    ("unknown-field", alter("ranks", 1), 400, "unexpected field(s) 'ranks'"),
    ("rank-string", alter("rank", "1"), 400, "'rank' must be an integer"),
    ("rank-bool", alter("rank", True), 400, "'rank' must be an integer"),
    ("rank-float", alter("rank", 1.0), 400, "'rank' must be an integer"),
    ("rank-negative", alter("rank", -1), 400, "'rank' must be in"),
    ("rank-too-big", alter("rank", 2), 400, "rank 2 out of range: num_workers is 2"),
    ("no-workers", alter("num_workers", 0), 400, "'num_workers' must be in"),
    ("too-many-workers", alter("num_workers", 10**6), 400, "PROGRESS_MAX_WORKERS"),
    ("started-string", alter("started", "now"), 400, "'started' must be a number"),
    ("host-number", alter("host", 5), 400, "'host' must be a string"),
    ("host-empty", alter("host", ""), 400, "'host' must have 1 to"),
    ("host-control", alter("host", "a\nb"), 400, "control characters"),
    ("host-long", alter("host", "h" * 300), 400, "'host' must have 1 to 253"),
    ("state", alter("state", "done"), 400, "'state' must be one of"),
    ("error-not-failed", alter("error", "x"), 400, "'error' goes only with state 'failed'"),
    ("slowdown-negative", alter("slowdown", -1), 400, "'slowdown' must be in"),
    ("totals-missing", alter("totals", ...), 400, "missing field(s) 'totals'"),
    ("totals-array", alter("totals", []), 400, "totals must be a JSON object"),
    ("totals-field", alter("totals.samples", ...), 400, "totals: missing field(s) 'samples'"),
    ("totals-huge", alter("totals.compute_s", 1e300), 400, "'totals.compute_s' must be in"),
    ("records-object", alter("records", {}), 400, "'records' must be an array"),
    ("records-too-many", alter("records", [{}] * 51), 400, "at most 50 per message"),
    ("record-number", alter("records", [1]), 400, "records[0] must be a JSON object"),
    ("record-missing", alter("records.0.time", ...), 400, "records[0]: missing field(s) 'time'"),
    ("record-unknown", alter("records.0.loss", 1), 400, "unexpected field(s) 'loss'"),
    ("record-acc", alter("records.0.test_acc", 1.5), 400, "'records[0].test_acc' must be in"),
    ("record-samples", alter("records.0.samples", -64), 400, "'records[0].samples' must be"),
    ("overruns-negative", alter("records.0.overruns", -1), 400, "'records[0].overruns' must be in"),
    ("overruns-float", alter("records.0.overruns", 1.0), 400, "'records[0].overruns' must be an"),
    (
        "eval-time-string",
        alter("records.0.eval_time", "3"),
        400,
        "'records[0].eval_time' must be a",
    ),
    ("eval-time-negative", alter("records.0.eval_time", -1), 400, "'records[0].eval_time' must be"),
    ("servers-object", alter("server_bytes", {}), 400, "'server_bytes' must be an array"),
    ("servers-empty", alter("server_bytes", []), 400, "'server_bytes' has 0 servers; 1 to 64"),
    ("servers-too-many", alter("server_bytes", [1] * 65), 400, "has 65 servers; 1 to 64"),
    ("servers-negative", alter("server_bytes", [5, -1]), 400, "'server_bytes[1]' must be in"),
    ("servers-float", alter("server_bytes", [1.5]), 400, "'server_bytes[0]' must be an integer"),
    ("run-empty", b'{"msg_type": "run"}', 400, "name the run ('run') or give 'failed'"),
    ("run-failed-number", b'{"msg_type": "run", "failed": 1}', 400, "'failed' must be a string"),
    ("run-unknown-field", b'{"msg_type": "run", "rank": 1}', 400, "unexpected field(s) 'rank'"),
]
