"""Discrete-event simulation of the State Server protocols with 4 ... 1,024 workers (no HTTP).

The server side is the real code: every message goes through ``StateServer.dispatcher.Engine``
(router, Alg. 2 in ``StateServer.scheduler``, the held requests of the non-blocking protocol)
with a simulated clock. The State Server is one FIFO queue that spends ``1 / capacity``
seconds per request (the capacity the benchmark measures, ``bench/bench_state_server.py``);
every message takes half the network round trip each way. The workers are modelled as
``trainer/loop.py`` with ``trainer.modes.ESync`` runs them:

* **blocking** (Alg. 2 as written): a reset when a round starts, then after every batch
  (but the first) a query the worker waits for;
* **nonblocking** (the delayed ACK): a ``hold`` when a round starts, another when the server
  answered compute and there is news, and a final one at the barrier; the worker never waits
  for the server, it reads the flag after each batch (``trainer.state_client.ProgressChannel``);
* **nonblocking+fill**: the same with ``--fill-last-batch 1`` (a smaller last batch sized to
  the time left, in multiples of 8 samples of 64);
* **ssgd**: one batch per round, no State Server (the idle fraction ESync is compared with).

A round ends when every worker is at the barrier; the KVStore exchange then takes
``--sync-ms``. Batch times are a worker's capability times a log-normal jitter.

    python -m bench.simulate                      # the table (< 1 minute) and the figure
    python -m bench.simulate --workers 4,64 --rounds 6 --no-figure

Prints, for each speed distribution, number of workers N and protocol: the State Server's
messages/s and utilisation, and each class of worker's idle fraction (1 - compute / wall);
then the N at which one State Server saturates. The figure goes to
``docs/figures/simulate.png``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from StateServer.dispatcher import Engine
from StateServer.messages import HoldMsg, InitMsg, QueryMsg, ReportMsg, ResetMsg, ResponseMsg
from StateServer.router import Router
from trainer.pacing import partial_batch, smoothed  # the workers' own rules

PROTOCOLS = ("blocking", "nonblocking", "nonblocking+fill", "ssgd")
BASE_BATCH_S = 0.015  # a fast worker's batch (lenet, batch 64, this machine)
BATCH = 64
CAPACITY = 3300.0  # requests/s of one runserver State Server (bench/bench_state_server.py)
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "simulate.png"


@dataclass
class Setup:
    """One simulated run."""

    caps: list[float]  # seconds per batch of each worker, before jitter
    protocol: str
    rounds: int = 8
    rtt: float = 0.0002  # network round trip (s)
    capacity: float = CAPACITY  # requests/s the State Server handles
    epsilon: float = 0.0
    sync_s: float = 0.005  # the KVStore exchange at the end of a round
    jitter: float = 0.05  # sigma of the log-normal factor on every batch time
    seed: int = 0
    warm: bool = False  # the server knows every capability from the start (no cold round)


@dataclass
class Outcome:
    """What a run did; ``iterations[t][r]`` local iterations of worker r in round t + 1.

    The rates and idle fractions leave the first round out (capabilities are unknown then):
    ``compute_s``, ``wall_s``, ``messages`` and ``server_busy_s`` count from its end.
    """

    iterations: list[list[int]]
    compute_s: list[float]
    wall_s: float
    messages: int
    server_busy_s: float
    partial_samples: int = 0
    capacity: float = CAPACITY

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s else 0.0

    @property
    def utilisation(self) -> float:
        return self.server_busy_s / self.wall_s if self.wall_s else 0.0

    def idle(self, rank: int) -> float:
        return 1.0 - self.compute_s[rank] / self.wall_s if self.wall_s else 0.0


def _gauss(*key: int) -> float:
    """A standard normal number that depends only on ``key`` (Box-Muller on its hash; the
    hash of a tuple of ints does not change between processes)."""
    h = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
    u1 = ((h & 0xFFFF_FFFF) + 0.5) / 2**32
    u2 = ((h >> 32) + 0.5) / 2**32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


class _Job:
    """A message in the simulated server; ``finish`` delivers the answer after rtt / 2."""

    __slots__ = ("msg", "result", "error", "_done")

    def __init__(self, msg: object, done: Callable[[_Job], None]) -> None:
        self.msg, self.result, self.error, self._done = msg, None, None, done

    def finish(self) -> None:
        self._done(self)


@dataclass
class _Worker:
    """One worker's state (the parts of trainer/loop.py and ESync the protocols use)."""

    rank: int
    cap: float
    c: float = 0.0
    k: int = 0
    t: int = 0
    compute_s: float = 0.0
    waiting: bool = False  # blocked on a blocking request
    verdict: int = 0  # nonblocking: the round the server said sync for
    final: bool = False  # ... and whether it wants the final hold
    finish_at: float | None = None  # when the slowest should finish (fill budget)
    last: int = 0  # size of the smaller last batch, once decided
    inflight: bool = False  # nonblocking: a hold is open
    mail: tuple[int, int, float, float, bool] | None = None
    sent: tuple[int, int, float, float, bool] | None = None
    resend: bool = False
    final_sent: bool = False


@dataclass
class Sim:
    """The event loop, the simulated server and the workers of one :class:`Setup`."""

    setup: Setup
    now: float = 0.0
    events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = field(
        default_factory=list
    )
    messages: int = 0
    server_busy_s: float = 0.0

    def __post_init__(self) -> None:
        s = self.setup
        self.seq = itertools.count()
        self.engine = Engine(Router(), max_hold_s=10.0)
        self.engine.handle(_Job(InitMsg(len(s.caps), s.epsilon), lambda job: None), 0.0)
        self.workers = [_Worker(r, cap) for r, cap in enumerate(s.caps)]
        for w in self.workers if s.warm else ():
            w.c = w.cap
            self.engine.handle(_Job(ReportMsg(w.rank, 0, w.cap, 0.0), lambda job: None), 0.0)
        self.server_free = 0.0
        self.tick_at: float | None = None
        self.arrived: list[float] = []
        self.iterations: list[list[int]] = []
        self.after_first: tuple[float, list[float], int, float] | None = None
        self.partial = 0
        self.nonblocking = s.protocol.startswith("nonblocking")
        self.fill = s.protocol.endswith("+fill")

    # --- events and the server ---------------------------------------------------------

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (when, next(self.seq), fn, args))

    def run(self) -> Outcome:
        for w in self.workers:
            self.at(0.0, self.start_round, w, 1)
        while self.events and len(self.iterations) < self.setup.rounds:
            self.now, _, fn, args = heapq.heappop(self.events)
            fn(*args)
        t0, compute0, messages0, busy0 = self.after_first or (
            0.0,
            [0.0] * len(self.workers),
            0,
            0.0,
        )
        compute = [w.compute_s - c0 for w, c0 in zip(self.workers, compute0, strict=True)]
        return Outcome(
            self.iterations,
            compute,
            self.now - t0,
            self.messages - messages0,
            self.server_busy_s - busy0,
            self.partial,
            self.setup.capacity,
        )

    def send(self, msg: object, on_answer: Callable[[ResponseMsg | object], None]) -> None:
        """To the server (FIFO, 1 / capacity s each), its answer back after rtt / 2."""
        self.messages += 1
        service = 1.0 / self.setup.capacity  # 0 for an infinitely fast server
        start = max(self.now + self.setup.rtt / 2, self.server_free)
        self.server_free = start + service
        self.server_busy_s += service

        def deliver(job: _Job) -> None:
            assert job.error is None, job.error
            self.at(self.now + self.setup.rtt / 2, on_answer, job.result)

        self.at(self.server_free, self._serve, _Job(msg, deliver))

    def _serve(self, job: _Job) -> None:
        self.engine.handle(job, self.now)
        self._schedule_tick()

    def _tick(self) -> None:
        if self.tick_at != self.now:
            return  # superseded
        self.tick_at = None
        self.engine.tick(self.now)
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        wake = self.engine.next_time()
        if wake is not None and (self.tick_at is None or wake < self.tick_at):
            self.tick_at = max(wake, self.now)
            self.at(self.tick_at, self._tick)

    # --- the workers ---------------------------------------------------------------------

    def start_round(self, w: _Worker, t: int) -> None:
        w.t, w.k, w.verdict, w.finish_at, w.last = t, 0, 0, None, 0
        if self.setup.protocol == "ssgd":
            self.compute(w)
        elif self.nonblocking:
            w.final_sent = False
            self.post(w, (t, 0, w.c, self.now, False))
            self.compute(w)
        else:
            w.waiting = True
            self.send(ResetMsg(w.rank, t, self.now), lambda _: self.resume(w, False))

    def compute(self, w: _Worker, n: int = BATCH) -> None:
        """A batch of ``n`` samples; its time depends only on (seed, rank, round, k), so the
        protocols compared see the same batch times."""
        seconds = w.cap * n / BATCH
        if self.setup.jitter:
            seconds *= math.exp(self.setup.jitter * _gauss(self.setup.seed, w.rank, w.t, w.k))
        self.at(self.now + seconds, self.batch_done, w, seconds, n)

    def batch_done(self, w: _Worker, seconds: float, n: int) -> None:
        w.compute_s += seconds
        w.k += 1
        if n == BATCH:
            w.c = smoothed(w.c, seconds)
        else:
            self.partial += n
        if self.setup.protocol == "ssgd":
            self.barrier(w)
        elif w.last:  # the smaller last batch: the server said sync before it
            if self.nonblocking:
                self.post(w, (w.t, w.k, w.c, self.now, True))
            self.barrier(w)
        elif self.nonblocking:
            self.check(w)
        else:
            w.waiting = True
            msg = QueryMsg(w.rank, w.k, w.c, self.now)
            self.send(msg, lambda resp: self.answered(w, resp))

    def answered(self, w: _Worker, resp: Any) -> None:
        if resp.left is not None:
            w.finish_at = self.now + resp.left
        self.resume(w, resp.action == "sync")

    def resume(self, w: _Worker, sync: bool) -> None:
        w.waiting = False
        if sync and self.fill and not w.last:
            w.last = self.fill_size(w)
        if sync and not w.last:
            self.barrier(w)
        else:
            self.compute(w, w.last or BATCH)

    def check(self, w: _Worker) -> None:
        """Nonblocking: the flag, then hand the progress over (final when syncing)."""
        sync = w.verdict == w.t
        if sync and self.fill and not w.last:
            w.last = self.fill_size(w)
        going = sync and not w.last
        self.post(w, (w.t, w.k, w.c, self.now, going))
        if going:
            self.barrier(w)
        else:
            self.compute(w, w.last or BATCH)

    def fill_size(self, w: _Worker) -> int:
        if w.finish_at is None:
            return 0
        return partial_batch(w.finish_at - self.now - self.setup.epsilon, w.c, BATCH)

    # --- the non-blocking channel (trainer.state_client.ProgressChannel's rules) -----------

    def post(self, w: _Worker, mail: tuple[int, int, float, float, bool]) -> None:
        w.mail = mail
        self.pump(w)

    def pump(self, w: _Worker) -> None:
        mail = w.mail
        if w.inflight or mail is None:
            return
        if w.verdict == mail[0]:
            if not (mail[4] and w.final and not w.final_sent):
                return
        elif mail == w.sent and not w.resend:
            return
        w.inflight, w.sent, w.resend = True, mail, False
        t, k, c, te, _ = mail
        self.send(HoldMsg(w.rank, t, k, c, te), lambda resp: self.held_answer(w, mail, resp))

    def held_answer(self, w: _Worker, mail: tuple[int, int, float, float, bool], resp: Any) -> None:
        w.inflight = False
        t, c, final = mail[0], mail[2], mail[4]
        if resp.action != "sync":
            w.resend = c > 0.0
        elif t == w.t:
            w.final_sent = w.final_sent or final
            if w.verdict != t:
                w.verdict, w.final = t, resp.final
                w.finish_at = self.now + resp.left if resp.left is not None else None
        self.pump(w)

    # --- the barrier ---------------------------------------------------------------------

    def barrier(self, w: _Worker) -> None:
        self.arrived.append(self.now)
        if len(self.arrived) < len(self.workers):
            return
        self.iterations.append([x.k for x in self.workers])
        if len(self.iterations) == 1:
            compute = [x.compute_s for x in self.workers]
            self.after_first = (self.now, compute, self.messages, self.server_busy_s)
        self.arrived.clear()
        nxt = self.now + self.setup.sync_s
        for x in self.workers:
            self.at(nxt, self.start_round, x, x.t + 1)


def simulate(setup: Setup) -> Outcome:
    """Run one :class:`Setup` to its last round."""
    return Sim(setup).run()


# --- the experiment: distributions, table, saturation, figure ------------------------------


def capabilities(dist: str, n: int, seed: int) -> list[float]:
    """Seconds per batch of ``n`` workers: ``mix`` repeats the default cluster's 1,1,4,16
    (x 15 ms, each worker within 2 % so that no two are exactly equal); ``lognormal`` draws
    from a log-normal with median 30 ms and sigma 0.7 (about 5 to 150 ms at N = 1,024)."""
    rng = random.Random(seed)
    if dist == "mix":
        factors = [(1, 1, 4, 16)[i % 4] for i in range(n)]
        return [BASE_BATCH_S * f * rng.uniform(0.98, 1.02) for f in factors]
    if dist == "lognormal":
        return [2 * BASE_BATCH_S * rng.lognormvariate(0.0, 0.7) for _ in range(n)]
    raise ValueError(f"unknown distribution {dist!r}")


def classes(dist: str, caps: list[float]) -> dict[str, list[int]]:
    """The worker classes of a table row: by slowdown (mix) or speed quartile (lognormal)."""
    if dist == "mix":
        names = {1: "1x", 4: "4x", 16: "16x"}
        out: dict[str, list[int]] = {name: [] for name in names.values()}
        for r, cap in enumerate(caps):
            out[names[min(names, key=lambda f: abs(cap - f * BASE_BATCH_S))]].append(r)
        return out
    order = sorted(range(len(caps)), key=caps.__getitem__)
    q = max(1, len(caps) // 4)
    return {
        "q1 fastest": order[:q],
        "q2": order[q : 2 * q],
        "q3": order[2 * q : 3 * q],
        "q4 slowest": order[3 * q :],
    }


@dataclass
class Row:
    """One line of the table; ``ideal_idle``: the same run with an infinitely fast server."""

    dist: str
    n: int
    protocol: str
    outcome: Outcome
    idle: dict[str, float]
    ideal_idle: dict[str, float]

    @property
    def server_cost(self) -> float:
        """The largest extra idle fraction a class pays for the real server's queue."""
        return max(self.idle[c] - self.ideal_idle[c] for c in self.idle)


def run_grid(args: argparse.Namespace) -> list[Row]:
    """Every distribution x N x protocol, each also with an infinitely fast server."""
    rows = []
    for dist in args.dists.split(","):
        for n in (int(x) for x in args.workers.split(",")):
            caps = capabilities(dist, n, args.seed)
            groups = classes(dist, caps)
            for protocol in args.protocols.split(","):
                setup = Setup(
                    caps,
                    protocol,
                    rounds=max(4, min(args.rounds, args.events // max(n, 1))),
                    rtt=args.rtt_ms / 1e3,
                    capacity=args.capacity,
                    sync_s=args.sync_ms / 1e3,
                    jitter=args.jitter,
                    seed=args.seed,
                )
                out = simulate(setup)
                ideal = out if protocol == "ssgd" else simulate(replace(setup, capacity=math.inf))
                rows.append(Row(dist, n, protocol, out, _idle(out, groups), _idle(ideal, groups)))
    return rows


def _idle(out: Outcome, groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(out.idle(r) for r in ranks) / len(ranks) for name, ranks in groups.items()}


def saturation(rows: list[Row], dist: str, protocol: str) -> str:
    """Where one State Server saturates, two ways.

    *Load*: the N at which the offered messages/s reach the capacity, i.e. capacity /
    (messages/s per worker), the per-worker rate taken at the largest N whose server is
    busy less than half of the time (queueing does not slow the rounds there yet).
    *Effect*: the smallest N of the grid at which the real server's queue makes some class
    of workers idle 5 points more than an infinitely fast server would (the bursts at round
    starts queue up before the average load reaches the capacity)."""
    mine = sorted((r for r in rows if r.dist == dist and r.protocol == protocol), key=lambda r: r.n)
    light = [r for r in mine if r.outcome.utilisation < 0.5 and r.outcome.messages]
    if not light:
        return "- | -"
    ref = light[-1]
    load_n = ref.n * ref.outcome.capacity / ref.outcome.messages_per_s
    hurt = next((r.n for r in mine if r.server_cost > 0.05), None)
    effect = f"N = {hurt}" if hurt is not None else f"not within N <= {mine[-1].n}"
    return f"~{load_n:,.0f} (rate at N = {ref.n}) | {effect}"


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    """The markdown tables: one per distribution, then the saturation points."""
    print(
        f"State Server capacity {args.capacity:,.0f} requests/s, network round trip "
        f"{args.rtt_ms:g} ms, KVStore exchange {args.sync_ms:g} ms per round, batch-time "
        f"jitter sigma {args.jitter:g}; idle = 1 - compute / wall, after the first round; "
        "server's cost: the largest extra idle of a class against an infinitely fast server.\n"
    )
    for dist in args.dists.split(","):
        mine = [r for r in rows if r.dist == dist]
        names = list(mine[0].idle)
        print(f"### {dist}\n")
        print(
            "| N | protocol | rounds | messages/s | server busy | "
            + " | ".join(f"idle {name}" for name in names)
            + " |"
        )
        print("|---:|---|---:|---:|---:|" + "---:|" * len(names))
        for r in mine:
            o = r.outcome
            cells = " | ".join(f"{r.idle[name]:.1%}" for name in names)
            print(
                f"| {r.n} | {r.protocol} | {len(o.iterations)} | {o.messages_per_s:,.0f} | "
                f"{o.utilisation:.0%} | {cells} | {r.server_cost:+.1%} |"
            )
        print()
    print(
        "| distribution | protocol | load reaches the capacity at N | the queue costs a class "
        "5 points of idle at |"
    )
    print("|---|---|---:|---|")
    for dist in args.dists.split(","):
        for protocol in args.protocols.split(","):
            if protocol != "ssgd":
                print(f"| {dist} | {protocol} | {saturation(rows, dist, protocol)} |")


def draw(rows: list[Row], args: argparse.Namespace, path: Path) -> None:
    """messages/s (with the capacity) and the fastest class's idle fraction against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = args.dists.split(",")
    fig, axes = plt.subplots(2, len(dists), figsize=(5.5 * len(dists), 7), squeeze=False)
    styles = {"blocking": "o-", "nonblocking": "s-", "nonblocking+fill": "^-", "ssgd": "x--"}
    for col, dist in enumerate(dists):
        top, bottom = axes[0][col], axes[1][col]
        for protocol in args.protocols.split(","):
            mine = sorted(
                (r for r in rows if r.dist == dist and r.protocol == protocol), key=lambda r: r.n
            )
            ns = [r.n for r in mine]
            fastest = next(iter(mine[0].idle))
            if protocol != "ssgd":
                top.plot(
                    ns, [r.outcome.messages_per_s for r in mine], styles[protocol], label=protocol
                )
            bottom.plot(ns, [r.idle[fastest] for r in mine], styles[protocol], label=protocol)
        top.axhline(args.capacity, color="grey", ls=":", label="capacity (bench)")
        top.set(xscale="log", yscale="log", title=f"{dist}: State Server load", ylabel="messages/s")
        bottom.set(
            xscale="log",
            ylim=(0, 1),
            xlabel="workers N",
            ylabel=f"idle fraction, {fastest} workers",
        )
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"\nfigure: {path}")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.simulate", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--workers", default="4,16,64,256,512,1024", help="comma list of N")
    ap.add_argument("--dists", default="mix,lognormal", help="mix and/or lognormal")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--rounds", type=int, default=8, help="rounds per run (at most)")
    ap.add_argument(
        "--events", type=int, default=4096, help="rounds x N budget: fewer rounds for large N"
    )
    ap.add_argument("--capacity", type=float, default=CAPACITY, help="State Server requests/s")
    ap.add_argument("--rtt-ms", type=float, default=0.2, help="network round trip")
    ap.add_argument("--sync-ms", type=float, default=5.0, help="KVStore exchange per round")
    ap.add_argument("--jitter", type=float, default=0.05, help="sigma of batch-time noise")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--figure", default=str(FIGURE))
    ap.add_argument("--no-figure", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Simulate the grid, print the tables, draw the figure."""
    args = build_parser().parse_args(argv)
    unknown = set(args.protocols.split(",")) - set(PROTOCOLS)
    if unknown:
        print(f"error: unknown protocol(s) {sorted(unknown)}; choose from {PROTOCOLS}")
        return 2
    rows = run_grid(args)
    print_table(rows, args)
    if not args.no_figure:
        draw(rows, args, Path(args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
