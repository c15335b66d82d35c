"""Progress reports and the dashboard in process: the store, message validation, the HTML/SVG
builders, and RunLog handing records to a reporter. The reporter over HTTP is
tests/integration/test_progress_reporter.py's, ``POST /progress/`` over a real State Server
tests/integration/test_progress_http.py's."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from StateServer.dashboard import page, svg
from StateServer.dashboard.reports import (
    FAILED,
    FINISHED,
    RECORD_FIELDS,
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
from tests.support.progress_messages import MALFORMED, META, NOW, alter, message, record
from trainer.progress import ProgressReporter
from trainer.records import RunLog


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


def test_bytes_per_parameter_server_are_summed_over_the_workers() -> None:
    store = DashboardStore()
    submit(store, rank=0, server_bytes=[300, 100])
    submit(store, rank=1, server_bytes=[100, 100])
    submit(store, rank=1)  # a message without them keeps the worker's last ones
    snap = store.snapshot(None, NOW)
    assert snap["server_bytes"] == [400, 200] and snap["server_balance"] == 0.5
    html = page.render_dashboard(snap)
    assert ">MB per parameter server</abbr></dt><dd>0.0, 0.0 (balance 0.50)</dd>" in html
    store = DashboardStore()
    submit(store, rank=0)  # no KVStore figures: nothing shown
    snap = store.snapshot(None, NOW)
    assert snap["server_bytes"] == [] and snap["server_balance"] is None
    assert "parameter server" not in page.render_dashboard(snap)


def test_the_reporter_sums_each_servers_bytes_beside_the_totals() -> None:
    reporter = ProgressReporter("http://127.0.0.1:9", dict(META), token="t", timeout=0.01)
    try:
        reporter.report(record(1, server_bytes=[10, 20]))
        reporter.report(record(2, server_bytes=[1, 2]))
        totals = dict(reporter._totals)  # report() sums them on the training thread
        entry = {k: v for k, v in record(2).items() if k in RECORD_FIELDS}
        msg = reporter._message([(entry, totals, 1.0)], "running", None)
    finally:
        reporter.finish(True, timeout=0.1)
    assert totals["server_bytes"] == [11, 22] and msg["server_bytes"] == [11, 22]
    assert "server_bytes" not in msg["totals"] and "server_bytes" not in msg["records"][0]
    assert parse_report(msg).server_bytes == (11, 22)


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
        body = alter(rng.choice(paths), rng.choice(values))
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


# --- the route over a real State Server ---------------------------------------------------
