"""Progress reports and the dashboard: the store, message validation, the HTML/SVG builders,
the reporter (never blocks training), and ``POST /progress/`` over a real State Server."""

from __future__ import annotations

import argparse
import copy
import http.client
import http.server
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import config
from launcher.supervision import CLUSTER_VARS, Cluster, child_env, free_port, start_state_server
from StateServer.dashboard import page, svg
from StateServer.dashboard.reports import (
    FAILED,
    FINISHED,
    RUNNING,
    STALE,
    STARTING,
    ReportError,
    RunMsg,
    decode_body,
    parse_report,
)
from StateServer.dashboard.series import Series
from StateServer.dashboard.store import DashboardStore
from trainer.progress import ProgressReporter, progress_reporter, run_name
from trainer.records import RunLog

NOW = 1_800_000_000.0
TOKEN = "progress-token"
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


def submit(store: DashboardStore, now: float = NOW, **fields: object) -> dict:
    return store.submit(parse_report(message(**fields)), now)


# --- bounded series ----------------------------------------------------------------------


def test_series_keeps_at_most_max_points_spread_over_the_whole_series() -> None:
    series = Series(50)
    for i in range(10_000):
        series.add(i, 2 * i)
        assert len(series) <= 50
    pts = series.points()
    assert 25 <= len(pts) <= 50
    assert pts[-1] == [9999, 19998]  # the newest raw value ends the curve
    assert pts[0][0] < 10_000 / 40  # the start of the run is still there
    xs = [x for x, _ in pts]
    assert xs == sorted(xs)
    assert all(abs(y - 2 * x) < 1e-6 * max(1, x) for x, y in pts)  # means of a line: on it


@pytest.mark.parametrize("max_points", [3, 4, 7, 8, 240])
def test_series_bound_holds_after_every_add(max_points: int) -> None:
    series = Series(max_points)
    for i in range(2000):
        series.add(i, random.random())
        assert len(series) <= max_points


def test_series_with_one_point_and_too_small() -> None:
    series = Series(10)
    assert series.points() == []
    series.add(1.5, 0.25)
    assert series.points() == [[1.5, 0.25]]
    with pytest.raises(ValueError):
        Series(2)


def test_store_keeps_every_series_bounded() -> None:
    store = DashboardStore(max_points=20)
    for r in range(1, 1001):
        submit(store, now=NOW + r, at=(r,), records=[_rec(r, test_acc=0.5, test_loss=1.0)])
    snap = store.snapshot(None, NOW + 1001)
    worker = snap["workers"][0]
    for series in (snap["accuracy"], snap["loss"], worker["steps_series"]):
        assert 1 <= len(series) <= 20
    assert len(worker["sec_per_batch_series"]) <= 20


def _rec(rnd: int, **over: object) -> dict:
    rec = {"round": rnd, "time": 0.5 * rnd, "local_iterations": 3, "samples": 192}
    return {**rec, "compute_s": 0.3, **over}


# --- states ------------------------------------------------------------------------------


def test_states_starting_running_stale_finished_and_a_new_run() -> None:
    store = DashboardStore(stale_s=30)
    ack = store.submit(RunMsg(run="lenet/esync", mode="esync", num_workers=2), NOW)
    assert ack == {"msg_type": "ack", "of": "run", "run": "lenet/esync", "state": STARTING}
    assert submit(store, rank=0)["state"] == RUNNING
    assert store.snapshot(None, NOW + 29)["state"] == RUNNING
    snap = store.snapshot(None, NOW + 31)
    assert snap["state"] == STALE and snap["workers"][0]["stale"]
    assert submit(store, NOW + 32, rank=1)["state"] == RUNNING
    assert store.snapshot(None, NOW + 33)["workers"][0]["stale"]  # rank 0 is still silent
    assert submit(store, NOW + 40, rank=0, state="finished")["state"] == RUNNING
    assert submit(store, NOW + 41, rank=1, state="finished")["state"] == FINISHED
    snap = store.snapshot(None, NOW + 1000)  # a finished run never goes stale
    assert snap["state"] == FINISHED and not any(w["stale"] for w in snap["workers"])
    assert snap["eta_s"] is None
    # the same worker again (same start): still the finished run
    assert submit(store, NOW + 1001, rank=1, state="finished")["state"] == FINISHED
    # a worker that started anew: a new run under the same name
    assert submit(store, NOW + 1002, rank=1, started=NOW + 900)["state"] == RUNNING
    snap = store.snapshot(None, NOW + 1003)
    assert [w["rank"] for w in snap["workers"]] == [1] and snap["accuracy"] == []


def test_failed_by_a_worker_and_by_the_launcher() -> None:
    store = DashboardStore()
    submit(store, rank=0)
    ack = submit(store, rank=1, state="failed", error="CUDA out of memory")
    assert ack["state"] == FAILED
    html = page.render_dashboard(store.snapshot(None, NOW))
    assert "FAILED" in html and "CUDA out of memory" in html

    store = DashboardStore()
    with pytest.raises(ReportError) as info:
        store.submit(parse_report({"msg_type": "run", "failed": "boom"}), NOW)
    assert info.value.status == 409
    submit(store, rank=0)
    ack = store.submit(parse_report({"msg_type": "run", "failed": "worker 1 died"}), NOW + 1)
    assert ack == {"msg_type": "ack", "of": "run", "run": "lenet/esync", "state": FAILED}
    snap = store.snapshot(None, NOW + 2)
    assert snap["failed"] == "worker 1 died" and "worker 1 died" in page.run_body(snap)
    # a run the launcher gives up on before any worker reported
    store.submit(parse_report({"msg_type": "run", "run": "x/sync", "failed": "no cluster"}), NOW)
    assert store.snapshot("x/sync", NOW)["state"] == FAILED


def test_a_run_of_another_size_while_running_is_409_unless_it_restarted() -> None:
    store = DashboardStore()
    submit(store, rank=0)
    with pytest.raises(ReportError) as info:
        submit(store, rank=0, num_workers=3)  # same worker, same start: contradiction
    assert info.value.status == 409 and "2 workers" in str(info.value)
    assert submit(store, rank=0, num_workers=3, started=NOW)["state"] == RUNNING  # a new run
    assert store.snapshot(None, NOW)["num_workers"] == 3


def test_straggler_shares_rates_and_accuracy_from_rank_0() -> None:
    store = DashboardStore()
    submit(store, rank=0, records=[_rec(4, test_acc=0.9, test_loss=0.3)])
    submit(store, rank=1, records=[_rec(4, local_iterations=1, compute_s=0.4, test_acc=0.1)])
    snap = store.snapshot(None, NOW)
    assert snap["straggler"] == 1
    w0, w1 = snap["workers"]
    assert w0["sec_per_batch"] == 0.1 and w1["sec_per_batch"] == 0.4
    assert snap["accuracy"] == [[2.0, 0.9]] and snap["test_acc"] == 0.9  # not rank 1's 0.1
    assert abs(sum(w0["shares"].values()) - 1.0) < 1e-5
    assert w0["shares"]["computing"] == pytest.approx(3.0 / 5.0, rel=1e-5)
    assert w0["shares"]["communicating"] == pytest.approx(1.2 / 5.0, rel=1e-5)
    assert w0["rounds_per_s"] == pytest.approx(1 / 5.0) and snap["rounds_per_s"] == 0.2
    assert snap["samples_per_s"] == pytest.approx(2 * 192 / 5.0)
    json.dumps(snap, allow_nan=False)


def test_on_time_per_worker_and_fidelity_per_run_from_overruns() -> None:
    store = DashboardStore()
    submit(store, rank=0, records=[_rec(1, overruns=1), _rec(2, local_iterations=5, overruns=0)])
    submit(store, rank=0, records=[_rec(3, local_iterations=2, overruns=1)])  # sums go on
    submit(
        store, rank=1, records=[_rec(1, local_iterations=1, overruns=1), _rec(2)]
    )  # 2nd: untimed
    snap = store.snapshot(None, NOW)
    w0, w1 = snap["workers"]
    assert w0["on_time"] == pytest.approx(1 - 2 / (3 + 5 + 2), rel=1e-5)  # 0.8
    assert w1["on_time"] == 0.0  # its one timed batch overran; the untimed record is not counted
    assert snap["fidelity"] == pytest.approx(1 - (2 + 1) / (10 + 1), rel=1e-5)
    json.dumps(snap, allow_nan=False)
    store = DashboardStore()  # no device emulation: no record carries overruns
    submit(store, rank=0)
    snap = store.snapshot(None, NOW)
    assert snap["fidelity"] is None and snap["workers"][0]["on_time"] is None


def test_accuracy_and_loss_are_plotted_at_the_evaluated_rounds_time() -> None:
    store = DashboardStore()
    submit(store, rank=0, records=[_rec(10, test_acc=0.9, test_loss=0.3, eval_time=4.25)])
    snap = store.snapshot(None, NOW)
    assert snap["workers"][0]["time"] == 5.0  # the record's own time is still the worker's
    assert snap["accuracy"] == [[4.25, 0.9]] and snap["loss"] == [[4.25, 0.3]]
    submit(store, rank=0, records=[_rec(12, test_acc=0.95)])  # no eval_time: the record's time
    assert store.snapshot(None, NOW)["accuracy"] == [[4.25, 0.9], [6.0, 0.95]]


def test_no_straggler_with_one_worker_and_ties_pick_the_lowest_rank() -> None:
    store = DashboardStore()
    submit(store, rank=0)
    assert store.snapshot(None, NOW)["straggler"] is None
    submit(store, rank=1)
    assert store.snapshot(None, NOW)["straggler"] == 0


def test_eta_from_max_time_and_from_rounds() -> None:
    store = DashboardStore()
    submit(store, rank=0, at=(10,), max_time=60.0)  # record time 5 s
    assert store.snapshot(None, NOW)["eta_s"] == pytest.approx(55.0)
    assert store.snapshot(None, NOW + 2)["eta_s"] == pytest.approx(53.0)
    store = DashboardStore()
    submit(store, rank=0, at=(10,), rounds=100)
    totals_s = 5.0  # 10 rounds in 5 s of timers: 2 rounds/s, 90 to go
    assert store.snapshot(None, NOW)["eta_s"] == pytest.approx(90 / (10 / totals_s))
    store = DashboardStore()
    submit(store, rank=0, at=(10,))
    assert store.snapshot(None, NOW)["eta_s"] is None


def test_runs_are_bounded_and_selectable() -> None:
    store = DashboardStore(max_runs=2)
    for name in ("a/esync", "b/sync", "c/async"):
        submit(store, run=name)
    assert store.run_ids() == ["c/async", "b/sync"]
    assert store.snapshot("b/sync", NOW)["run"] == "b/sync"
    with pytest.raises(KeyError):
        store.snapshot("a/esync", NOW)
    assert [r["run"] for r in store.snapshot(None, NOW)["runs"]] == ["c/async", "b/sync"]
    assert DashboardStore().snapshot(None, NOW) == {"run": None, "server_time": NOW, "runs": []}


# --- message validation ------------------------------------------------------------------

VALID = json.dumps(message()).encode()


def _with(path: str, value: object) -> bytes:
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
    ("no-msg-type", _with("msg_type", ...), 400, "'msg_type' must be progress or run"),
    ("bad-msg-type", _with("msg_type", "query"), 400, "'msg_type' must be progress or run"),
    ("missing-field", _with("rank", ...), 400, "missing field(s) 'rank'"),
    ("unknown-field", _with("ranks", 1), 400, "unexpected field(s) 'ranks'"),
    ("rank-string", _with("rank", "1"), 400, "'rank' must be an integer"),
    ("rank-bool", _with("rank", True), 400, "'rank' must be an integer"),
    ("rank-float", _with("rank", 1.0), 400, "'rank' must be an integer"),
    ("rank-negative", _with("rank", -1), 400, "'rank' must be in"),
    ("rank-too-big", _with("rank", 2), 400, "rank 2 out of range: num_workers is 2"),
    ("no-workers", _with("num_workers", 0), 400, "'num_workers' must be in"),
    ("too-many-workers", _with("num_workers", 10**6), 400, "PROGRESS_MAX_WORKERS"),
    ("started-string", _with("started", "now"), 400, "'started' must be a number"),
    ("host-number", _with("host", 5), 400, "'host' must be a string"),
    ("host-empty", _with("host", ""), 400, "'host' must have 1 to"),
    ("host-control", _with("host", "a\nb"), 400, "control characters"),
    ("host-long", _with("host", "h" * 300), 400, "'host' must have 1 to 253"),
    ("state", _with("state", "done"), 400, "'state' must be one of"),
    ("error-not-failed", _with("error", "x"), 400, "'error' goes only with state 'failed'"),
    ("slowdown-negative", _with("slowdown", -1), 400, "'slowdown' must be in"),
    ("totals-missing", _with("totals", ...), 400, "missing field(s) 'totals'"),
    ("totals-array", _with("totals", []), 400, "totals must be a JSON object"),
    ("totals-field", _with("totals.samples", ...), 400, "totals: missing field(s) 'samples'"),
    ("totals-huge", _with("totals.compute_s", 1e300), 400, "'totals.compute_s' must be in"),
    ("records-object", _with("records", {}), 400, "'records' must be an array"),
    ("records-too-many", _with("records", [{}] * 51), 400, "at most 50 per message"),
    ("record-number", _with("records", [1]), 400, "records[0] must be a JSON object"),
    ("record-missing", _with("records.0.time", ...), 400, "records[0]: missing field(s) 'time'"),
    ("record-unknown", _with("records.0.loss", 1), 400, "unexpected field(s) 'loss'"),
    ("record-acc", _with("records.0.test_acc", 1.5), 400, "'records[0].test_acc' must be in"),
    ("record-samples", _with("records.0.samples", -64), 400, "'records[0].samples' must be"),
    ("overruns-negative", _with("records.0.overruns", -1), 400, "'records[0].overruns' must be in"),
    ("overruns-float", _with("records.0.overruns", 1.0), 400, "'records[0].overruns' must be an"),
    (
        "eval-time-string",
        _with("records.0.eval_time", "3"),
        400,
        "'records[0].eval_time' must be a",
    ),
    ("eval-time-negative", _with("records.0.eval_time", -1), 400, "'records[0].eval_time' must be"),
    ("run-empty", b'{"msg_type": "run"}', 400, "name the run ('run') or give 'failed'"),
    ("run-failed-number", b'{"msg_type": "run", "failed": 1}', 400, "'failed' must be a string"),
    ("run-unknown-field", b'{"msg_type": "run", "rank": 1}', 400, "unexpected field(s) 'rank'"),
]


@pytest.mark.parametrize(
    ("body", "status", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_messages_are_refused_with_a_precise_error(
    body: bytes, status: int, fragment: str
) -> None:
    with pytest.raises(ReportError) as info:
        parse_report(decode_body(body))
    assert info.value.status == status
    assert fragment in str(info.value)


def test_random_mutations_raise_only_progress_errors() -> None:
    """Never a 500: any field replaced by any JSON value is a ReportError or accepted."""
    rng = random.Random(7)
    values = [None, True, 0, -1, 2**60, 1e300, -0.5, "", "x" * 2000, [], {}, [{}], {"a": 1}]
    store = DashboardStore()
    paths = ["msg_type", "run", "mode", "num_workers", "rank", "host", "device", "started"]
    paths += ["state", "error", "slowdown", "epsilon", "rounds", "max_time", "dropped"]
    paths += ["totals", "totals.rounds", "totals.eval_s", "records", "records.0"]
    paths += ["records.0.round", "records.0.time", "records.0.test_loss", "records.0.slowdown"]
    paths += ["records.0.overruns", "records.0.eval_time"]
    for _ in range(3000):
        body = _with(rng.choice(paths), rng.choice(values))
        try:
            store.submit(parse_report(decode_body(body)), NOW)
        except ReportError as exc:
            assert 400 <= exc.status < 500
    json.dumps(store.snapshot(None, NOW + 100), allow_nan=False)
    page.render_dashboard(store.snapshot(None, NOW + 100))


# --- HTML and SVG ------------------------------------------------------------------------

EVIL = "<script>alert('x')</script>&\""


def test_everything_a_worker_sends_is_escaped() -> None:
    store = DashboardStore()
    submit(store, run=f"run{EVIL}", host=f"h{EVIL}", device=f"d{EVIL}", mode=f"m{EVIL}")
    submit(store, run="other/<b>", rank=1, state="failed", error=f"e{EVIL}")
    html = page.render_dashboard(store.snapshot(f"run{EVIL}", NOW))
    assert "<script" not in html and "<b>" not in html
    assert html.count("&lt;script&gt;") >= 3  # run, host, device (and the mode)
    assert "run=other%2F%3Cb%3E" in html  # the link to the other run is URL-quoted
    html = page.render_dashboard(store.snapshot("other/<b>", NOW))
    assert "<script" not in html and "e&lt;script&gt;alert(&#x27;x&#x27;)" in html


def test_page_of_an_empty_store_and_of_a_run_without_workers() -> None:
    html = page.render_dashboard(DashboardStore().snapshot(None, NOW))
    assert "No run has reported progress yet" in html
    assert '<meta http-equiv="refresh" content="2">' in html
    assert "http-equiv" not in page.render_dashboard({"run": None, "runs": []}, refresh_s=0)
    store = DashboardStore()
    store.submit(RunMsg(run="lenet/sync", mode="sync", num_workers=4, max_time=30.0), NOW)
    html = page.render_dashboard(store.snapshot(None, NOW))
    assert "STARTING" in html and "no worker has reported yet" in html
    assert "no evaluation yet" in html and "<polyline" not in html


def test_page_of_a_running_run() -> None:
    store = DashboardStore()
    submit(store, rank=0, slowdown=1.0, epsilon=0.005, records=[_rec(2, test_acc=0.8)])
    submit(store, rank=1, slowdown=4.0, records=[_rec(2, compute_s=1.2)])
    html = page.render_dashboard(store.snapshot(None, NOW))
    assert 'data-state="running"' in html and "RUNNING" in html
    assert html.count('<tr class="running') == 2
    assert "\N{MULTIPLICATION SIGN}4" in html and "node-1" in html
    assert "slack \N{GREEK SMALL LETTER EPSILON}" in html and "Alg. 2" in html
    assert "local steps this round" in html and "STRAGGLER" in html
    assert re.search(r'<polyline class="curve acc" fill="none" points="[\d.]+,[\d.]+"/>', html)


def test_page_shows_each_workers_on_time_share_and_the_runs_fidelity() -> None:
    store = DashboardStore()
    submit(store, rank=0, records=[_rec(1, local_iterations=8, overruns=1)])  # 7 of 8 on time
    submit(store, rank=1, records=[_rec(1)])  # reports no overruns
    html = page.render_dashboard(store.snapshot(None, NOW))
    rows = dict(re.findall(r'data-rank="(\d+)">(.*?)</tr>', html))
    assert '<td class="on-time">87.5%</td>' in rows["0"]
    assert '<td class="on-time">-</td>' in rows["1"]
    assert ">on time</abbr>" in html
    assert ">fidelity</abbr></dt><dd>87.5% of batches on time</dd>" in html
    store = DashboardStore()
    submit(store, rank=0)
    html = page.render_dashboard(store.snapshot(None, NOW))
    assert "fidelity" not in html and '<td class="on-time">-</td>' in html


def test_line_chart_with_one_point_no_point_and_many() -> None:
    one = svg.line_chart([[0.0, 0.5]], title="t", x_label="x", y_label="y", y_range=(0, 1))
    coords = re.search(r'<polyline[^>]* points="([^"]*)"', one).group(1).split()
    assert len(coords) == 1 and "<circle" in one
    empty = svg.line_chart([], title="t", x_label="x", y_label="y", empty_text="nothing <yet>")
    assert "<polyline" not in empty and "nothing &lt;yet&gt;" in empty
    many = svg.line_chart([[i, i * i] for i in range(50)], title="t", x_label="x", y_label="y")
    assert len(re.search(r'points="([^"]*)"', many).group(1).split()) == 50
    assert ">0<" in many and ">50<" in many and ">2500<" in many  # ticks: x to 49, y to 49^2


def test_nice_ticks_sparkline_bar_and_formats() -> None:
    assert svg.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svg.nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = svg.nice_ticks(3.7, 98.2)
    assert ticks[0] <= 3.7 and ticks[-1] >= 98.2 and len(ticks) <= 8
    assert svg.tick_label(0.4, 0.2) == "0.4" and svg.tick_label(40, 20) == "40"
    assert svg.sparkline([], title="s") == '<span class="muted">-</span>'
    one = svg.sparkline([[1, 3]], title="s")
    assert len(re.search(r'points="([^"]*)"', one).group(1).split()) == 2
    assert svg.stacked_bar([("a", 0.0, "x")]) == '<span class="muted">-</span>'
    bar = svg.stacked_bar([("a", 0.75, "x"), ("b", 0.25, "y")], width=100)
    assert 'width="75.0"' in bar and 'x="75.0"' in bar and "a 75%" in bar
    assert page.fmt_duration(12.34) == "12.3 s" and page.fmt_duration(245) == "4 min 05 s"
    assert page.fmt_duration(7620) == "2 h 07 min" and page.fmt_duration(None) == "-"
    assert page.fmt_number(7960.4) == "7,960" and page.fmt_number(0.01234, "s") == "0.0123 s"


# --- the reporter ------------------------------------------------------------------------


class FakeServer:
    """An in-process HTTP server that records the progress messages (and answers ``status``)."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.bodies.append(json.loads(body))
                answer = b'{"msg_type":"ack"}'
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def records(self) -> list[dict]:
        return [rec for body in self.bodies for rec in body["records"]]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def test_reporter_never_blocks_training_when_nothing_listens() -> None:
    port = free_port()  # nothing listens there
    rep = ProgressReporter(f"http://127.0.0.1:{port}", META, queue_size=1000)
    rec = record(1)
    started = time.perf_counter()
    for i in range(10_000):
        rec["round"] = i + 1
        rep.report(rec)
    burst = time.perf_counter() - started
    assert burst < 1.0, f"10,000 reports took {burst:.3f} s"  # ~20 us each; a batch is ~10 ms
    assert rep.dropped >= 10_000 - 1000 - config.PROGRESS_MAX_RECORDS
    t0 = time.perf_counter()
    rep.close(timeout=3.0)
    assert time.perf_counter() - t0 < 2.0 and not rep._thread.is_alive()
    assert rep.sent == 0 and rep.failures >= 1 and "Connection" in (rep.last_error or "")


def test_reporter_batches_rounds_and_sends_the_final_state(fake: FakeServer) -> None:
    rep = ProgressReporter(
        f"http://127.0.0.1:{fake.port}", {**META, "rounds": 500, "max_time": 60.0}
    )
    for r in range(1, 121):
        rep.report(record(r, test_acc=0.5, test_loss=float("nan")) if r % 10 == 0 else record(r))
    rep.finish(True)
    assert rep.sent == 120 and rep.dropped == 0
    msgs = [parse_report(body) for body in fake.bodies]  # the server's own parser
    assert len(msgs) < 120 and all(len(m.records) <= config.PROGRESS_MAX_RECORDS for m in msgs)
    assert [rec.round for m in msgs for rec in m.records] == list(range(1, 121))
    last = msgs[-1]
    assert last.state == FINISHED and all(m.state == RUNNING for m in msgs[:-1])
    assert last.totals.rounds == 120 and last.totals.samples == 120 * 192
    assert last.totals.compute_s == pytest.approx(120 * 0.3)
    assert (last.run, last.rounds, last.max_time, last.host) == ("lenet/esync", 500, 60.0, "node-a")
    evaluated = [rec for m in msgs for rec in m.records if rec.test_acc is not None]
    assert len(evaluated) == 12 and all(rec.test_loss is None for rec in evaluated)  # NaN left out
    rep.report(record(121))  # after finish: ignored
    assert rep.sent == 120


def test_reporter_forwards_overruns_and_eval_time(fake: FakeServer) -> None:
    rep = ProgressReporter(f"http://127.0.0.1:{fake.port}", META)
    rep.report(record(1, overruns=2))
    rep.report(record(2, overruns=0, test_acc=0.5, eval_time=0.5))
    rep.finish(True)
    recs = [rec for body in fake.bodies for rec in parse_report(body).records]
    assert [(r.overruns, r.eval_time) for r in recs] == [(2, None), (0, 0.5)]


def test_reporter_retries_until_the_server_comes_up() -> None:
    port = free_port()
    rep = ProgressReporter(f"http://127.0.0.1:{port}", META, min_interval=0.01)
    for r in range(1, 6):
        rep.report(record(r))
    time.sleep(0.4)  # a few refused attempts
    server = FakeServer(port)
    try:
        deadline = time.monotonic() + 10
        while len(server.records()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [rec["round"] for rec in server.records()] == [1, 2, 3, 4, 5]
        rep.finish(False, "killed")
        assert server.bodies[-1]["state"] == "failed" and server.bodies[-1]["error"] == "killed"
        assert rep.dropped == 0 and rep.failures >= 1
    finally:
        rep.close(0.5)
        server.close()


def test_reporter_drops_a_refused_message_instead_of_retrying_it() -> None:
    server = FakeServer(status=400)
    try:
        rep = ProgressReporter(f"http://127.0.0.1:{server.port}", META, min_interval=0.0)
        rep.report(record(1))
        deadline = time.monotonic() + 10
        while not server.bodies and time.monotonic() < deadline:
            time.sleep(0.01)
        rep.finish(True)
        assert rep.rejected == 1 and rep.sent == 0 and len(server.bodies) == 2
        assert server.bodies[-1]["dropped"] == 1  # the dashboard learns a report was lost
    finally:
        server.close()


def test_runlog_hands_every_record_to_the_reporter(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.records: list[dict] = []
            self.finished: list[bool] = []

        def report(self, rec: dict) -> None:
            self.records.append(rec)

        def finish(self, ok: bool) -> None:
            self.finished.append(ok)

    rec = Recorder()
    log = RunLog(tmp_path / "w", dict(META), reporter=rec)
    log.write(record(1))
    log.write(record(2))
    log.close()
    assert [r["round"] for r in rec.records] == [1, 2] and rec.finished == [True]
    plain = RunLog(tmp_path / "v", dict(META))  # no reporter: unchanged
    plain.write(record(1))
    plain.close()


def test_progress_reporter_from_main_flags() -> None:
    args = argparse.Namespace(report_progress=None, rounds=10, max_time=0.0, epsilon=0.01)
    assert progress_reporter(args, META) is None
    args.report_progress = f"127.0.0.1:{free_port()}"
    rep = progress_reporter(args, META)
    assert rep is not None
    try:
        assert rep._identity["rounds"] == 10 and rep._identity["epsilon"] == 0.01
        assert "max_time" not in rep._identity  # 0: no time limit
    finally:
        rep.close(0.5)
    rep = progress_reporter(args, {**META, "mode": "sync", "split": "niid"})
    assert rep is not None
    try:
        assert "epsilon" not in rep._identity and rep._identity["run"] == "lenet/sync-niid"
    finally:
        rep.close(0.5)
    assert run_name({"run": "mine"}) == "mine"
    with pytest.raises(ValueError):
        ProgressReporter("https://example.org", META)


# --- the route over a real State Server ---------------------------------------------------


class Http:
    """Requests to a State Server on 127.0.0.1."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post(self, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        status, resp_headers, data = self.request("POST", "/progress/", body, hdrs)
        assert resp_headers["content-type"] == "application/json", (status, data[:200])
        return status, json.loads(data)


def _serve(tmp_path_factory: pytest.TempPathFactory, kind: str, **env: str) -> Iterator[Http]:
    cluster = Cluster(tmp_path_factory.mktemp("progress-server"))
    try:
        _, url = start_state_server(cluster, kind, env=child_env(1, env, drop=CLUSTER_VARS))
        yield Http(url)
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    yield from _serve(tmp_path_factory, "runserver")


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    yield from _serve(tmp_path_factory, "gunicorn", ESYNC_TOKEN=TOKEN)


def test_route_takes_progress_and_serves_the_dashboard(server: Http) -> None:
    status, ack = server.post(json.dumps(message(run="http/esync", host="gpu-<1>")).encode())
    assert (status, ack) == (
        200,
        {"msg_type": "ack", "of": "progress", "run": "http/esync", "state": "running"},
    )
    status, headers, body = server.request("GET", "/dashboard.json?run=http%2Fesync")
    snap = json.loads(body)
    assert status == 200 and snap["workers"][0]["host"] == "gpu-<1>"
    status, headers, body = server.request("GET", "/dashboard/?run=http%2Fesync")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"gpu-&lt;1&gt;" in body and b"gpu-<1>" not in body
    status, _, body = server.request("GET", "/dashboard.json?run=nope")
    assert status == 404 and "no run 'nope'" in json.loads(body)["error"]
    status, _, body = server.request("GET", "/dashboard/?refresh=-1")
    assert status == 400 and "refresh" in json.loads(body)["error"]
    for path in ("/status.json", "/status/", "/"):  # the State Server's routes are untouched
        assert server.request("GET", path)[0] == 200
    status, _, body = server.request("GET", "/dashboard/nope")
    assert status == 404 and "no route" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_route_answers_every_malformed_message_with_a_4xx_json_error(
    server: Http, body: bytes, status: int, fragment: str
) -> None:
    got, obj = server.post(body)
    assert got == status and fragment in obj["error"], obj


def test_route_methods_lengths_and_launcher_messages(server: Http) -> None:
    status, headers, body = server.request("GET", "/progress/")
    assert status == 405 and headers["allow"] == "POST" and b"error" in body
    status, _, body = server.request("POST", "/dashboard.json", b"{}")
    assert 400 <= status < 500 and b"error" in body  # a page, not an API route (CSRF)
    got = server.request("POST", "/progress/", b"{}", {"Content-Length": "999999999"})
    assert got[0] == 413 and b"error" in got[2]
    run = {"msg_type": "run", "run": "http/sync", "mode": "sync", "num_workers": 2}
    assert server.post(json.dumps(run).encode())[1]["state"] == STARTING
    failed = {"msg_type": "run", "run": "http/sync", "failed": "worker 1 exited with code 1"}
    assert server.post(json.dumps(failed).encode())[1]["state"] == FAILED
    html = server.request("GET", "/dashboard/?run=http%2Fsync")[2].decode()
    assert "FAILED" in html and "worker 1 exited with code 1" in html


def test_token_is_required_for_progress_but_not_for_the_page(token_server: Http) -> None:
    body = json.dumps(message(run="tok/esync")).encode()
    status, obj = token_server.post(body)
    assert status == 403 and "token" in obj["error"]
    assert token_server.post(body, {"X-ESync-Token": TOKEN})[0] == 200
    assert token_server.post(body, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert token_server.post(body, {"X-ESync-Token": "wrong"})[0] == 403
    assert token_server.request("GET", "/dashboard/")[0] == 200
    rep = ProgressReporter(token_server.url, {**META, "run": "tok/rep"}, token=TOKEN)
    rep.report(record(1))
    rep.finish(True)
    assert rep.sent == 1 and rep.rejected == 0
    snap = json.loads(token_server.request("GET", "/dashboard.json?run=tok%2Frep")[2])
    assert snap["workers"][0]["state"] == FINISHED
