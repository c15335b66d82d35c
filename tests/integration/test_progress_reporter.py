"""The progress reporter (trainer/progress.py) against an in-process HTTP server on loopback
or a port nothing listens on: it never blocks training, batches rounds, sends the final
state, retries until the server comes up and drops a refused message."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest

import config
from launcher.supervision import free_port
from StateServer.dashboard.reports import FINISHED, RUNNING, parse_report
from tests.support.progress_messages import META, record
from trainer.progress import ProgressReporter, progress_reporter, run_name


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
