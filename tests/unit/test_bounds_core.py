"""The State Server's semantic bounds (``StateServer.scheduler.Bounds``), without a process or a
socket: the probes of issue #23 item 3 (an init of 10,000 workers, a reset or hold of round
2**53, a rank out of range, a round two ahead) are refused with a 4xx that names what is wrong
and leave the state exactly as it was; a normal 4-worker run (both protocols, a restart with
rejoin, a resumed run) stays within them. The refusals are also checked through the one HTTP
layer (``httpapi``: the answer of a message, the fast path's answer, the Django view), and the
launcher's side (``supervision.state_server_env``, ``local.state_server``).

The same over real HTTP is tests/integration/test_bounds_http.py's."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")
import django  # noqa: E402 (after the settings module is chosen)

django.setup()

from django.test import RequestFactory, override_settings  # noqa: E402

from launcher import local, supervision  # noqa: E402
from StateServer import httpapi, messages  # noqa: E402
from StateServer.dispatcher import Dispatcher, Engine  # noqa: E402
from StateServer.messages import (  # noqa: E402
    MAX_INT,
    MAX_NUM_WORKERS,
    HoldMsg,
    InitMsg,
    MessageError,
    QueryMsg,
    ResetMsg,
    parse_fields,
    parse_message,
)
from StateServer.router import Router  # noqa: E402
from StateServer.scheduler import (  # noqa: E402
    CLUSTER_SIZE_VAR,
    COMPUTE,
    RUN_IDLE_S,
    SYNC,
    Bounds,
    BoundsError,
    NotInitializedError,
    Scheduler,
    SchedulerError,
    parse_cluster_size,
)
from StateServer.stateserver import views  # noqa: E402
from tests.support.engine import send  # noqa: E402

N = 4
EPS = 0.05
CAPS = [0.1, 0.2, 0.2, 0.8]  # rank 3 is the slowest
T0 = 1_000.0


def served(size: int | None = N) -> Engine:
    """The engine of a served scheduler (the bounds on), cluster size ``size``."""
    return Engine(Router(Scheduler(Bounds(cluster_size=size))), max_hold_s=5.0)


def state(engine: Engine, now: float = T0 + 100.0) -> tuple[Any, ...]:
    """Everything a refused message must leave as it was: the records table and run
    parameters (with the round's anchor), the run's generation, the snapshot, the holds."""
    sched = engine.router.scheduler
    holds = (sorted(engine.holds.ranks()), engine.holds.next_time())
    return copy.deepcopy((sched.db, sched.generation, sched.snapshot(now), holds))


def run_rounds(engine: Engine, rounds: int, start: int = 1, t0: float = T0) -> float:
    """Blocking protocol: ``rounds`` rounds of the 4 workers from round ``start`` (every
    worker resets, then queries after each batch until told sync); returns the time after."""
    sched = engine.router.scheduler
    now = t0
    for t in range(start, start + rounds):
        for rank in range(N):
            job = send(engine, ResetMsg(rank, t, now), now)
            assert job.error is None and job.result.round == t, job.error
        k, te, synced = [0] * N, [now] * N, set()
        while len(synced) < N:
            rank = min((r for r in range(N) if r not in synced), key=lambda r: te[r] + CAPS[r])
            k[rank] += 1
            te[rank] += CAPS[rank]
            job = send(engine, QueryMsg(rank, k[rank], CAPS[rank], te[rank]), te[rank])
            assert job.error is None, job.error
            if job.result.action == SYNC:
                synced.add(rank)
            assert k[rank] < 50, f"rank {rank} never told sync in round {t}"
        assert k[3] == 1 and k[0] >= 2, k  # Alg. 2: the slowest once, the fastest more
        now = max(te) + 0.01
        assert sched.db.round == t
    return now


def in_round_2(size: int | None = N) -> tuple[Engine, float]:
    """A served 4-worker run that has ended round 1 and is in round 2 (all reset into it)."""
    engine = served(size)
    send(engine, InitMsg(N, EPS), T0)
    now = run_rounds(engine, 1)
    for rank in range(N):
        send(engine, ResetMsg(rank, 2, now), now)
    assert engine.router.scheduler.db.round == 2
    return engine, now


def refused(engine: Engine, msg: object, now: float, status: int) -> str:
    """Send ``msg``; assert it is refused with ``status`` and changes nothing; its text."""
    before = state(engine)
    job = send(engine, msg, now)
    assert job.done and job.result is None, job.result
    assert isinstance(job.error, SchedulerError), job.error
    assert job.error.status == status, (job.error.status, str(job.error))
    assert state(engine) == before, "a refused message changed the state"
    return str(job.error)


# --- the probes ---------------------------------------------------------------------------


def test_an_init_of_10000_workers_is_a_409_naming_both_sizes() -> None:
    engine, now = in_round_2()
    text = refused(engine, InitMsg(10_000, EPS), now, 409)
    assert "4 workers" in text and "num_workers 10000" in text and CLUSTER_SIZE_VAR in text
    text = refused(engine, InitMsg(10_000, EPS, rejoin=True), now, 409)
    assert "rejoin refused" in text and "4 workers" in text and "10000" in text
    assert engine.router.scheduler.slowest() is not None  # the round can still end


def test_without_the_bounds_the_same_init_wrecks_the_run() -> None:
    """The probe is real: Alg. 2 alone takes the 10,000-worker init, and then no round ends
    (the slowest stays unknown), so the refusal above is what keeps the run alive."""
    engine = Engine(Router(), max_hold_s=5.0)
    send(engine, InitMsg(N, EPS), T0)
    now = run_rounds(engine, 1)
    send(engine, InitMsg(10_000, EPS), now)
    sched = engine.router.scheduler
    for rank in range(N):
        send(engine, ResetMsg(rank, 2, now), now)
        send(engine, QueryMsg(rank, 1, CAPS[rank], now), now)
    assert sched.db.num_workers == 10_000 and sched.slowest() is None
    assert send(engine, QueryMsg(0, 2, CAPS[0], now + 1), now + 1).result.action == COMPUTE


def test_a_reset_and_a_hold_of_round_2_pow_53_are_409s() -> None:
    engine, now = in_round_2()
    for msg in (ResetMsg(1, MAX_INT, now), HoldMsg(1, MAX_INT, 0, CAPS[1], now)):
        text = refused(engine, msg, now, 409)
        assert f"round {MAX_INT} refused" in text and "current round is 2" in text
        assert "at most round 3" in text
    # the later holds are answered as before: the fast worker waits for the slowest
    fast = send(engine, HoldMsg(0, 2, 1, CAPS[0], now + 0.1), now + 0.1)
    assert not fast.done and engine.router.scheduler.db.round == 2


def test_without_the_bounds_a_round_2_pow_53_makes_every_hold_sync_at_once() -> None:
    engine = Engine(Router(), max_hold_s=5.0)
    send(engine, InitMsg(N, EPS), T0)
    now = run_rounds(engine, 1)
    send(engine, ResetMsg(1, MAX_INT, now), now)
    job = send(engine, HoldMsg(0, 2, 1, CAPS[0], now + 0.1), now + 0.1)
    assert job.done and job.result.action == SYNC  # the wreck the bound prevents


@pytest.mark.parametrize("rank", [N, N + 1, MAX_NUM_WORKERS - 1])
def test_a_rank_at_or_above_the_cluster_size_is_a_400(rank: int) -> None:
    engine, now = in_round_2()
    for msg in (
        ResetMsg(rank, 2, now),
        messages.ReportMsg(rank, 1, 0.1, now),
        QueryMsg(rank, 1, 0.1, now),
        HoldMsg(rank, 2, 1, 0.1, now),
    ):
        text = refused(engine, msg, now, 400)
        assert f"rank {rank} out of range: num_workers is {N}" in text


def test_a_negative_rank_is_a_400_in_parsing_and_in_the_scheduler() -> None:
    for kind, fields in (
        ("reset", {"rank": -1, "t": 2, "te": T0}),
        ("query", {"rank": -1, "k": 1, "c": 0.1, "te": T0}),
        ("hold", {"rank": -1, "t": 2, "k": 1, "c": 0.1, "te": T0}),
    ):
        with pytest.raises(MessageError, match=r"field 'rank' must be in \[0, 9999\]") as err:
            parse_message({"msg_type": kind, **fields})
        assert err.value.status == 400
    with pytest.raises(MessageError, match="field 'rank'"):
        parse_fields("reset", {"r": "-1", "t": "2", "te": "1"})
    engine, now = in_round_2()  # and should a caller skip parsing, the scheduler refuses it
    assert "rank -1 out of range" in refused(engine, ResetMsg(-1, 2, now), now, 400)
    assert "rank -1 out of range" in refused(engine, QueryMsg(-1, 1, 0.1, now), now, 400)


def test_a_round_two_ahead_is_a_409_and_one_ahead_is_the_next_round() -> None:
    engine, now = in_round_2()
    sched = engine.router.scheduler
    refused(engine, ResetMsg(0, 4, now), now, 409)
    refused(engine, HoldMsg(0, 4, 0, CAPS[0], now), now, 409)
    refused(engine, HoldMsg(0, 4, 3, CAPS[0], now), now, 409)
    # the boundary: round 3 is the next round, accepted (and then 5 is two ahead)
    assert send(engine, ResetMsg(0, 3, now), now).result.round == 3
    assert sched.db.round == 3
    refused(engine, ResetMsg(1, 5, now), now, 409)
    assert send(engine, HoldMsg(1, 4, 0, CAPS[1], now), now).error is None
    assert sched.db.round == 4


# --- the other fields: finite, bounded ----------------------------------------------------

FIELD_LIMITS = {  # the message of each field, and a value just above its bound
    "k": ({"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": T0}, MAX_INT + 1),
    "c": ({"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": T0}, 1e6 * 1.01),
    "te": ({"msg_type": "report", "rank": 0, "k": 1, "c": 0.1, "te": T0}, 1e11 * 1.01),
    "epsilon": ({"msg_type": "init", "num_workers": 4, "epsilon": 0.1}, 1e6 * 1.01),
    "t": ({"msg_type": "hold", "rank": 0, "t": 2, "k": 1, "c": 0.1, "te": T0}, MAX_INT + 1),
    "num_workers": ({"msg_type": "init", "num_workers": 4, "epsilon": 0.1}, MAX_NUM_WORKERS + 1),
}


@pytest.mark.parametrize("name", sorted(FIELD_LIMITS))
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "negative", "above", "huge"])
def test_every_number_is_finite_and_bounded(name: str, bad: str) -> None:
    base, above = FIELD_LIMITS[name]
    value = {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "negative": -1,
        "above": above,
        "huge": 10**30,
    }[bad]
    parse_message(base)  # the base message is fine
    with pytest.raises(MessageError, match=f"field '{name}'") as err:
        parse_message({**base, name: value})
    assert err.value.status == 400
    if isinstance(value, float) and not math.isfinite(value):  # and never reach the parser
        body = json.dumps({**base, name: value}).encode()  # NaN / Infinity literals
        with pytest.raises(MessageError, match="not a number in JSON"):
            messages.decode_json(body)


def test_the_form_routes_refuse_nan_and_inf_too() -> None:
    for value in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(MessageError, match="field 'c'"):
            parse_fields("query", {"r": "0", "k": "1", "c": value, "te": "1"})
        with pytest.raises(MessageError, match="field 'epsilon'"):
            parse_fields("init", {"num_workers": "4", "epsilon": value})


# --- the cluster size ---------------------------------------------------------------------


def test_an_init_of_the_cluster_size_starts_a_new_run_and_another_never() -> None:
    engine = served()
    sched = engine.router.scheduler
    text = refused(engine, InitMsg(3, EPS), T0, 409)  # not even the first one
    assert "cluster of 4 workers" in text and "num_workers 3" in text
    assert not sched.db.initialized
    refused(engine, InitMsg(5, EPS, rejoin=True), T0, 409)
    assert send(engine, InitMsg(N, EPS), T0).result.of == "init"
    now = run_rounds(engine, 2)
    assert send(engine, InitMsg(N, 0.5), now).error is None  # same size: a new run
    assert (sched.db.round, sched.db.records, sched.db.epsilon) == (0, {}, 0.5)
    refused(engine, InitMsg(2, EPS), now + 10 * RUN_IDLE_S, 409)  # silence changes nothing


def test_a_served_scheduler_says_its_cluster_size() -> None:
    assert served().router.scheduler.snapshot(T0)["cluster_size"] == N
    assert served(None).router.scheduler.snapshot(T0)["cluster_size"] is None
    assert Scheduler().snapshot(T0)["cluster_size"] is None


def test_without_a_cluster_size_another_size_waits_for_the_run_to_end() -> None:
    """A hand-started server: the first init may be of any size; while a run is in progress
    (a round of it ended here, a worker spoke less than RUN_IDLE_S ago) an init of another
    size is a 409 naming both sizes; the same size starts a new run; after the silence, or
    before any round ended, another size is accepted."""
    engine = served(None)
    sched = engine.router.scheduler
    assert send(engine, InitMsg(7, EPS), T0).error is None  # any size first
    assert send(engine, ResetMsg(6, 40, T0), T0).error is None  # anchors, no round ended
    assert send(engine, InitMsg(N, EPS), T0 + 1).error is None  # not in progress: accepted
    now = run_rounds(engine, 2, t0=T0 + 2)
    assert sched.in_progress(now)
    text = refused(engine, InitMsg(10_000, EPS), now, 409)
    assert "run of 4 workers is in progress" in text and "num_workers 10000" in text
    assert f"{RUN_IDLE_S:g} s" in text
    refused(engine, InitMsg(2, EPS), now + RUN_IDLE_S - 1, 409)
    assert send(engine, InitMsg(2, EPS), now + RUN_IDLE_S + 1).error is None  # silent: over
    assert sched.db.num_workers == 2
    # the same size restarts a run in progress (a new run of the same cluster)
    engine = served(None)
    send(engine, InitMsg(N, EPS), T0)
    now = run_rounds(engine, 2)
    assert send(engine, InitMsg(N, EPS), now).error is None
    assert engine.router.scheduler.db.records == {}


def test_scheduler_init_without_a_clock_counts_a_run_as_in_progress() -> None:
    sched = Scheduler(Bounds())
    sched.init(N, EPS)
    sched.reset(0, 1, T0, T0)
    sched.reset(0, 2, T0, T0)
    with pytest.raises(BoundsError):
        sched.init(3, EPS)
    sched.init(N, EPS)  # the same size needs no clock


def test_parse_cluster_size() -> None:
    assert parse_cluster_size(None) is None and parse_cluster_size(" ") is None
    assert parse_cluster_size("4") == 4 and parse_cluster_size(" 16 ") == 16
    assert parse_cluster_size(str(MAX_NUM_WORKERS)) == MAX_NUM_WORKERS
    for raw in ("0", "-1", "4.0", "four", "1e3", str(MAX_NUM_WORKERS + 1)):
        with pytest.raises(ValueError, match=CLUSTER_SIZE_VAR):
            parse_cluster_size(raw)


# --- a normal run within the bounds ---------------------------------------------------------


def test_a_four_worker_run_blocking_and_nonblocking_stays_within_the_bounds() -> None:
    engine = served()
    sched = engine.router.scheduler
    assert send(engine, InitMsg(N, EPS), T0).result.of == "init"
    now = run_rounds(engine, 3)  # rounds 1..3, blocking
    # round 4, non-blocking: every worker's first hold is its reset
    jobs = {rank: send(engine, HoldMsg(rank, 4, 0, CAPS[rank], now), now) for rank in range(N)}
    assert sched.db.round == 4
    assert jobs[3].done and jobs[3].result.action == SYNC and jobs[3].result.final
    assert all(not jobs[r].done for r in range(3))  # the fast ones are held
    final = send(engine, HoldMsg(3, 4, 1, CAPS[3], now + CAPS[3]), now + CAPS[3])
    assert final.done and final.result.action == SYNC
    assert all(jobs[r].done and jobs[r].result.action == SYNC for r in range(3))
    # round 5 begins with a hold of one worker (one round ahead: accepted)
    assert send(engine, HoldMsg(0, 5, 0, CAPS[0], now + 1), now + 1).error is None
    assert sched.db.round == 5 and sched.db.advanced
    assert send(engine, InitMsg(N, EPS, rejoin=True), now + 1).result.round == 5  # no-op


def test_a_restarted_server_learns_the_round_from_the_rejoins() -> None:
    """A new server (round 0) in the middle of round 57: the first reset after the rejoin
    anchors the round wherever it is; the others re-register in it or one past it; then
    the bound holds from there on."""
    engine = served()  # the restarted server
    sched = engine.router.scheduler
    now = T0 + 500.0
    query = send(engine, QueryMsg(2, 3, CAPS[2], now), now)
    assert isinstance(query.error, NotInitializedError) and query.error.status == 409
    assert send(engine, InitMsg(N, EPS, rejoin=True), now).error is None
    assert send(engine, QueryMsg(1, 2, CAPS[1], now), now).error is None  # no anchor
    assert send(engine, ResetMsg(2, 57, now - 1), now).result.round == 57  # anchors
    assert send(engine, InitMsg(N, EPS, rejoin=True), now).error is None  # the next one
    assert send(engine, ResetMsg(0, 58, now), now).result.round == 58  # one past: fine
    assert send(engine, InitMsg(N, EPS, rejoin=True), now).error is None
    assert send(engine, ResetMsg(3, 57, now - 1), now).result.round == 58  # an older round
    refused(engine, ResetMsg(1, 60, now), now, 409)
    assert sched.db.round == 58 and sorted(sched.db.records) == [0, 1, 2, 3]
    run_rounds(engine, 2, start=59, t0=now)
    assert sched.db.round == 60 and not sched.db.recovering


def test_a_resumed_run_starts_at_its_checkpoints_round() -> None:
    engine = served()
    send(engine, InitMsg(N, EPS), T0)
    now = run_rounds(engine, 2, start=41)  # resumed after round 40: the first reset anchors
    assert engine.router.scheduler.db.round == 42
    refused(engine, ResetMsg(0, 44, now), now, 409)


def test_a_plain_init_lifts_the_anchor() -> None:
    engine = served()
    send(engine, InitMsg(N, EPS), T0)
    now = run_rounds(engine, 1, start=10)
    assert send(engine, InitMsg(N, EPS), now).error is None  # a new run (say, a restart)
    assert send(engine, ResetMsg(0, 30, now), now).result.round == 30


def test_alg2_alone_has_no_bounds() -> None:
    """``Scheduler()`` without bounds is the algorithm as the simulations drive it."""
    sched = Scheduler()
    sched.init(N, EPS)
    sched.reset(0, 1, T0, T0)
    assert sched.reset(1, 9, T0, T0) == 9
    sched.init(10_000, EPS)
    assert sched.db.num_workers == 10_000


# --- the HTTP layer: every refusal a 4xx JSON error -------------------------------------


def test_every_refusal_status_has_a_status_line() -> None:
    """The fast paths look their status line up in ``STATUS_LINES``: a status missing there
    would be a 500 on the fast path only."""
    for exc in (SchedulerError, NotInitializedError, BoundsError, MessageError("x")):
        assert exc.status in httpapi.STATUS_LINES, exc
        assert 400 <= exc.status < 500


@pytest.fixture
def disp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dispatcher]:
    """The process's dispatcher, for this test: a served scheduler in round 2 of a 4-worker
    run (its thread stopped after the test)."""
    engine, _ = in_round_2()
    d = Dispatcher(engine.router)
    d.engine = engine
    d.start()
    monkeypatch.setattr(httpapi, "get_dispatcher", lambda: d)
    yield d
    d.stop()


PROBES: list[tuple[str, dict[str, object], int, str]] = [
    ("init 10000", {"msg_type": "init", "num_workers": 10_000, "epsilon": 0.0}, 409, "10000"),
    ("reset 2**53", {"msg_type": "reset", "rank": 0, "t": MAX_INT, "te": T0}, 409, "round"),
    ("hold 2**53", {"msg_type": "hold", "rank": 0, "t": MAX_INT, "k": 0, "c": 0.1, "te": T0}, 409,
     "round"),
    ("reset +2", {"msg_type": "reset", "rank": 0, "t": 4, "te": T0}, 409, "at most round 3"),
    ("rank 4", {"msg_type": "query", "rank": 4, "k": 1, "c": 0.1, "te": T0}, 400, "rank 4"),
    ("rank -1", {"msg_type": "query", "rank": -1, "k": 1, "c": 0.1, "te": T0}, 400, "'rank'"),
]  # fmt: skip


def _status_json(disp: Dispatcher) -> dict[str, object]:
    snap = disp.router.scheduler.snapshot(T0)
    return json.loads(json.dumps(snap))


@pytest.mark.parametrize(("label", "obj", "status", "says"), PROBES)
@pytest.mark.parametrize("in_thread", [True, False], ids=["runserver", "queued"])
def test_answer_message_and_the_fast_path_refuse_with_a_json_4xx(
    disp: Dispatcher,
    label: str,
    obj: dict[str, object],
    status: int,
    says: str,
    in_thread: bool,
) -> None:
    before = _status_json(disp)
    body = json.dumps(obj).encode()
    # the fast paths (runserver's raw socket server and the WSGI middleware both call this)
    header = {"host": "127.0.0.1", "content-type": "application/json"}.get
    fast = httpapi.fast_answer(header, body, None, "/msg/", None, in_thread)
    try:
        msg = parse_message(obj)
    except MessageError as exc:  # malformed: the fast path leaves it to Django (a 400)
        assert status == 400 and exc.status == 400 and says in str(exc)
        assert fast is None
    else:  # well formed: refused by the scheduler, the same answer on every path
        assert fast is not None and fast[0] == status, (label, fast)
        assert says in json.loads(fast[1])["error"], fast
        answered = httpapi.answer_message(msg, None, in_thread, disp)
        assert answered == (status, json.loads(fast[1])), answered
        assert httpapi.STATUS_LINES[status].startswith(str(status))
    assert _status_json(disp) == before, label


@pytest.mark.parametrize(("label", "obj", "status", "says"), PROBES)
def test_the_django_view_refuses_with_a_json_4xx(
    disp: Dispatcher, label: str, obj: dict[str, object], status: int, says: str
) -> None:
    before = _status_json(disp)
    request = RequestFactory().post(
        "/msg/", json.dumps(obj), content_type="application/json", HTTP_HOST="127.0.0.1"
    )
    with override_settings(ESYNC_TOKEN=None):
        resp = views.message_view(request, route="/msg/")
    assert resp.status_code == status, (label, resp.content)
    assert resp["Content-Type"] == "application/json"
    assert says in json.loads(resp.content)["error"], resp.content
    assert _status_json(disp) == before, label


@pytest.mark.parametrize(
    ("route", "fields", "says"),
    [
        ("/init/", {"num_workers": "10000", "epsilon": "0"}, "10000"),
        ("/init/", {"num_workers": "3", "epsilon": "0", "rejoin": "1"}, "rejoin refused"),
        ("/reset/", {"r": "1", "t": str(MAX_INT), "te": "1"}, "round"),
        ("/reset/", {"r": "1", "t": "4", "te": "1"}, "at most round 3"),
    ],
)
def test_the_upstream_routes_refuse_with_a_json_409(
    disp: Dispatcher, route: str, fields: dict[str, str], says: str
) -> None:
    """Upstream's routes (JSON; numeric strings allowed) go to Django's view only."""
    before = _status_json(disp)
    request = RequestFactory().post(
        route, json.dumps(fields), content_type="application/json", HTTP_HOST="127.0.0.1"
    )
    with override_settings(ESYNC_TOKEN=None):
        resp = views.message_view(request, route=route)
    assert resp.status_code == 409, resp.content
    assert says in json.loads(resp.content)["error"], resp.content
    assert _status_json(disp) == before


def test_the_wire_form_of_a_probe_is_a_valid_message() -> None:
    """The probes are well formed (so only the bounds can refuse them)."""
    for msg in (InitMsg(10_000, 0.0), ResetMsg(0, MAX_INT, T0), HoldMsg(0, MAX_INT, 0, 0.1, T0)):
        assert parse_message(messages.message_to_dict(msg)) == msg


# --- the launcher's side ----------------------------------------------------------------------


def test_state_server_env_names_the_cluster_size() -> None:
    assert supervision.state_server_env(4) == {CLUSTER_SIZE_VAR: "4"}
    assert supervision.state_server_env(0) == {}
    assert CLUSTER_SIZE_VAR == "ESYNC_CLUSTER_SIZE"


class FakeWhere:
    """A remote services host that records what it is asked to start."""

    remote = True

    def __init__(self) -> None:
        self.started: list[tuple[str, list[str], dict[str, str]]] = []

    def free_ports(self, count: int, bind: str) -> list[int]:
        return [12345] * count

    def start(self, cluster: object, name: str, role: str, argv: list[str], env: dict) -> None:
        self.started.append((name, list(argv), dict(env)))


def test_a_remote_state_server_gets_the_cluster_size() -> None:
    where = FakeWhere()
    plan = SimpleNamespace(services=where, advertise="10.0.0.7")
    opts = argparse.Namespace(state_server_at=None, state_server="runserver", workers=6)
    assert local.state_server(opts, plan, cluster=None) == ("10.0.0.7", "12345")
    ((name, argv, env),) = where.started
    assert name == "state-server" and argv[-2:] == ["10.0.0.7:12345", "--noreload"]
    assert env == {CLUSTER_SIZE_VAR: "6"}


def test_the_local_state_server_is_started_with_the_number_of_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, object]] = []

    def fake_start(cluster: object, kind: str, **kw: object) -> tuple[None, str]:
        calls.append({"kind": kind, **kw})
        return None, "http://127.0.0.1:4321"

    monkeypatch.setattr(local, "start_state_server", fake_start)
    plan = SimpleNamespace(services=SimpleNamespace(remote=False), advertise="127.0.0.1")
    opts = argparse.Namespace(state_server_at=None, state_server="gunicorn", workers=3)
    assert local.state_server(opts, plan, cluster=None) == ("127.0.0.1", "4321")
    assert calls == [{"kind": "gunicorn", "host": "127.0.0.1", "workers": 3}]
