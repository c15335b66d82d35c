"""Benchmark of the State Server: latency and throughput of Alg. 2 queries over HTTP.

Starts a real server on a free port of 127.0.0.1 (runserver, then gunicorn; optionally
Django's plain runserver for comparison), and for 1, 8, 32, 64 concurrent clients runs a
closed loop per client for a fixed time: each client is one worker rank on one raw
keep-alive socket (pre-formatted HTTP/1.1 request, minimal response parsing, so the
client's Python costs little of the 2 cores); clients are spread over a few processes.
Both protocols (``--protocols``). Blocking: a client sends ``query`` messages with
k = 1, 2, ...; when the answer is ``sync`` it sends a ``reset`` into the next round (as a
trainer does after synchronising), so the scheduler runs through whole rounds. Non-blocking:
a client sends a ``hold`` into round t (the delayed ACK: answered when Alg. 2 says sync), the
final hold when the answer asks for it, then round t + 1. Every request counts; its latency
is send-to-last-byte, for a hold minus the time the server held it on purpose.

Then one client with the real ``trainer.state_client.StateClient`` and one with a
``requests.Session`` measure the trainer's hot path. Prints a markdown table; every
server it starts is stopped (process group) before it exits. Run from the repo root:

    .venv/bin/python -m bench.bench_state_server [--duration 4] [--servers runserver,gunicorn]

The servers are started and stopped by :mod:`launcher.supervision` (the State Server command line of
``launch.py``), their output in a temporary folder; when one does not come up, the error
shows its last output.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.supervision import Cluster, Proc, child_env, start_state_server

SERVER_KINDS = ("runserver", "gunicorn", "plain-runserver")
START_TIMEOUT_S = 30.0

# --- servers --------------------------------------------------------------------------


def start_server(cluster: Cluster, kind: str, threads: int) -> tuple[Proc, int]:
    """Start a server of ``kind`` in ``cluster`` (its own process group) on a free port of
    127.0.0.1 and wait until it answers; returns the process and the port.

    ``plain-runserver`` is runserver with Django's own server class; ``threads`` is
    gunicorn's number of gthread threads. The clients send no token, so the caller's
    ``ESYNC_TOKEN`` is not passed on (nor its ``ESYNC_PLAIN_RUNSERVER``).
    """
    if kind not in SERVER_KINDS:
        raise ValueError(f"unknown server kind {kind!r} (choose from {', '.join(SERVER_KINDS)})")
    extra = {"ESYNC_THREADS": str(threads)}
    if kind == "plain-runserver":
        extra["ESYNC_PLAIN_RUNSERVER"] = "1"
    env = child_env(extra=extra, drop=("DMLC_", "ESYNC_TOKEN", "ESYNC_PLAIN_RUNSERVER"))
    proc, url = start_state_server(
        cluster, kind.removeprefix("plain-"), env=env, timeout=START_TIMEOUT_S
    )
    return proc, int(url.rsplit(":", 1)[1])


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that were waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def http_request(port: int, method: str, path: str, obj: dict | None = None) -> tuple[int, dict]:
    """One request on a fresh connection (setup only, not measured)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = json.dumps(obj).encode() if obj is not None else None
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


# --- load generator -------------------------------------------------------------------

_HEAD = (
    b"POST /msg/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)


def _read_response(rfile) -> tuple[int, bytes]:
    status = int(rfile.readline().split(b" ", 2)[1])
    length = 0
    while True:
        line = rfile.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, rfile.read(length)


def _blocking_body(rank: int, t: int, k: int, c: float, sync: bool) -> bytes:
    """The next request of a blocking worker: a reset after a sync, else a query."""
    from time import time as wall

    if sync:
        return b'{"msg_type":"reset","rank":%d,"t":%d,"te":%.6f}' % (rank, t, wall())
    return b'{"msg_type":"query","rank":%d,"k":%d,"c":%.4f,"te":%.6f}' % (rank, k, c, wall())


def _hold_body(rank: int, t: int, k: int, c: float) -> bytes:
    from time import time as wall

    return b'{"msg_type":"hold","rank":%d,"t":%d,"k":%d,"c":%.4f,"te":%.6f}' % (
        rank,
        t,
        k,
        c,
        wall(),
    )


def _client(
    port: int, rank: int, measure_from: float, stop_at: float, protocol: str = "blocking"
) -> tuple[list, int, int]:
    """Closed loop of one worker rank; returns (latencies in window, errors, resets in it).

    blocking: queries with k = 1, 2, ..., a reset into the next round after each sync.
    nonblocking: a hold with k = 0 into round t (answered when Alg. 2 says sync: at once
    for the slowest rank, when the slowest reaches the barrier for the others), then the
    final hold the server asks for, then round t + 1. A hold's latency leaves out the time
    the server held it on purpose (``held``) but keeps the time it was late (``late``):
    what remains is the server's own delay. (``resets`` counts holds with k = 0.)
    """
    from time import perf_counter

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile = sock.makefile("rb")
    c = 0.005 * (1 + rank % 7)  # heterogeneous capabilities
    k, t, lat, errors, resets = 0, 1, [], 0, 0
    nonblocking = protocol == "nonblocking"
    body = _hold_body(rank, t, 0, c) if nonblocking else _blocking_body(rank, t, 0, c, True)
    try:
        while True:
            t0 = perf_counter()
            sock.sendall(_HEAD % len(body) + body)
            status, data = _read_response(rfile)
            t1 = perf_counter()
            answer = json.loads(data) if status == 200 else {}
            if t0 >= measure_from:
                lat.append(t1 - t0 - answer.get("held", 0.0) + answer.get("late", 0.0))
                resets += body[13:18] == b"reset" or b'"k":0,' in body
            if status != 200:
                errors += 1
            if t1 >= stop_at:
                return lat, errors, resets
            sync = answer.get("action") == "sync"
            if not nonblocking:
                t = answer["round"] + 1 if sync else t  # after a sync: the next round
                k = 0 if sync else k + 1
                body = _blocking_body(rank, t, k, c, sync)
            elif sync and answer.get("final") and b'"k":0,' in body:
                body = _hold_body(rank, t, 1, c)  # the slowest reaches the barrier
            elif sync:
                t = max(t, answer["round"]) + 1
                body = _hold_body(rank, t, 0, c)
            # else: compute, the hold was held for the server's maximum: send it again
    finally:
        rfile.close()
        sock.close()


def _process(
    port: int, ranks: list[int], measure_from: float, stop_at: float, out: mp.Queue, protocol: str
) -> None:
    """One client process: a thread per rank."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(ranks)) as pool:
        results = list(pool.map(lambda r: _client(port, r, measure_from, stop_at, protocol), ranks))
    lat = [x for res in results for x in res[0]]
    out.put((lat, sum(res[1] for res in results), sum(res[2] for res in results)))


@dataclass
class Result:
    """One row of the table."""

    server: str
    clients: int
    procs: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float = 0.0  # CPU the server used during the whole level
    other_cpu_frac: float = 0.0  # share of the machine's CPUs busy with other processes
    resets: int = 0  # requests that were resets (the others are queries)
    protocol: str = "blocking"

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, int(round(q / 100 * len(sorted_vals))) - 1))
    return sorted_vals[idx]


def run_level(
    server: str,
    port: int,
    pgid: int,
    clients: int,
    args: argparse.Namespace,
    protocol: str = "blocking",
) -> Result:
    """Init for ``clients`` workers, run the closed loops of ``protocol``, aggregate."""
    procs, warmup, duration = args.procs, args.warmup, args.duration
    status, _ = http_request(
        port, "POST", "/msg/", {"msg_type": "reset", "num_workers": clients, "epsilon": 0.002}
    )
    assert status == 200, status
    procs = max(1, min(procs, clients))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = time.perf_counter() + 0.3  # let the processes fork and connect
    measure_from, stop_at = start + warmup, start + warmup + duration
    ranks = [list(range(clients))[i::procs] for i in range(procs)]
    workers = [
        ctx.Process(target=_process, args=(port, rs, measure_from, stop_at, out, protocol))
        for rs in ranks
    ]
    cpu_before = group_cpu_seconds(pgid)
    busy_before, own_before, wall_before = (
        machine_busy_seconds(),
        own_cpu_seconds(),
        time.monotonic(),
    )
    for w in workers:
        w.start()
    lat: list[float] = []
    errors = resets = 0
    for _ in workers:
        part, err, res = out.get(timeout=warmup + duration + 60)
        lat.extend(part)
        errors += err
        resets += res
    for w in workers:
        w.join(10)
    cpu = group_cpu_seconds(pgid) - cpu_before
    other = (machine_busy_seconds() - busy_before) - cpu - (own_cpu_seconds() - own_before)
    other_frac = max(other, 0.0) / ((time.monotonic() - wall_before) * (os.cpu_count() or 1))
    lat.sort()
    return Result(
        server,
        clients,
        procs,
        len(lat),
        errors,
        duration,
        percentile(lat, 50) * 1e3,
        percentile(lat, 99) * 1e3,
        cpu,
        other_frac,
        resets,
        protocol,
    )


def hot_path(port: int, n: int) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) of one StateClient and one requests.Session doing n sequential queries."""
    import requests

    from trainer.state_client import StateClient

    http_request(port, "POST", "/msg/", {"msg_type": "reset", "num_workers": 2, "epsilon": 0})
    out = {}
    client = StateClient(f"http://127.0.0.1:{port}", retry_for=5)
    lat = []
    for k in range(n):
        t0 = time.perf_counter()
        client.query(0, k, 0.01, time.time())
        lat.append(time.perf_counter() - t0)
    client.close()
    lat.sort()
    out["StateClient (http.client)"] = (percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3)
    session, lat = requests.Session(), []
    for k in range(n):
        t0 = time.perf_counter()
        r = session.post(
            f"http://127.0.0.1:{port}/msg/",
            json={"msg_type": "query", "rank": 1, "k": k, "c": 0.01, "te": time.time()},
        )
        r.json()
        lat.append(time.perf_counter() - t0)
    session.close()
    lat.sort()
    out["requests.Session"] = (percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.bench_state_server", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--servers",
        default="runserver,gunicorn",
        help="comma list of " + ", ".join(SERVER_KINDS),
    )
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument(
        "--protocols",
        default="blocking,nonblocking",
        help="blocking (queries and resets) and/or nonblocking (holds: the delayed ACK)",
    )
    ap.add_argument("--procs", type=int, default=2, help="client processes (at most)")
    ap.add_argument("--threads", type=int, default=72, help="gunicorn gthread threads")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds measured per level")
    ap.add_argument("--hot-path", type=int, default=500, help="sequential client queries")
    return ap


def bench_server(
    server: str, args: argparse.Namespace
) -> tuple[list[Result], dict[str, tuple[float, float]]]:
    """Every load level, then the hot path, against one server; it is stopped afterwards."""
    rows: list[Result] = []
    hot: dict[str, tuple[float, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-state-server-") as proc_dir,
        Cluster(proc_dir) as cluster,
    ):
        proc, port = start_server(cluster, server, args.threads)
        for protocol in args.protocols.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                res = run_level(server, port, proc.pid, clients, args, protocol)
                rows.append(res)
                print(
                    f"# {server} {protocol} {clients} clients: {res.rate:.0f} req/s, p50 "
                    f"{res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms, errors {res.errors}",
                    file=sys.stderr,
                    flush=True,
                )
        if args.hot_path:
            hot = hot_path(port, args.hot_path)
    return rows, hot


def print_tables(
    rows: list[Result],
    hot: dict[str, dict[str, tuple[float, float]]],
    args: argparse.Namespace,
    load_before: float,
) -> None:
    """The markdown tables of the results."""
    print(
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.duration:g} s per "
        f"level after {args.warmup:g} s warm-up, at most {args.procs} client processes; "
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after. "
        "'other processes' CPU' is the share of all CPUs that processes other than the "
        "server and the clients used during the level: it skews every number. Nonblocking: "
        "'queries' are the holds with k >= 1 (the final ones), the latency of a hold leaves "
        "out the time the server held it on purpose.\n"
    )
    print(
        "| server | protocol | clients | client procs | requests/s | of which queries/s "
        "| p50 ms | p99 ms | errors | server CPU µs/request | other processes' CPU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        total = r.rate * (r.seconds + args.warmup + 0.3)  # CPU was measured over all of it
        print(
            f"| {r.server} | {r.protocol} | {r.clients} | {r.procs} | {r.rate:.0f} | "
            f"{(r.requests - r.resets) / r.seconds:.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {r.server_cpu_s / total * 1e6:.0f} | "
            f"{r.other_cpu_frac:.0%} |"
        )
    if hot:
        print("\n| server | 1 client, sequential queries | p50 ms | p99 ms |")
        print("|---|---|---:|---:|")
        for server, clients in hot.items():
            for name, (p50, p99) in clients.items():
                print(f"| {server} | {name} | {p50:.2f} | {p99:.2f} |")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    ap = build_parser()
    args = ap.parse_args(argv)
    servers = args.servers.split(",")
    unknown = [s for s in servers if s not in SERVER_KINDS]
    if unknown:
        ap.error(f"unknown server kind(s) {', '.join(unknown)}; choose from {SERVER_KINDS}")
    rows: list[Result] = []
    hot: dict[str, dict[str, tuple[float, float]]] = {}
    load_before = os.getloadavg()[0]
    for server in servers:
        server_rows, server_hot = bench_server(server, args)
        rows.extend(server_rows)
        if server_hot:
            hot[server] = server_hot
    print_tables(rows, hot, args, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
