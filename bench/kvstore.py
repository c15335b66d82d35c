"""Push + pull throughput of resnet18-v1's parameter set over 1, 2 and 4 parameter servers.

    python -m bench.kvstore                      # servers 1,2,4; 5 s each; ~2 minutes
    python -m bench.kvstore --servers 1,2 --seconds 10

Each case is a real ps-lite cluster on this machine (a scheduler, N servers started as
main.py starts them, one worker: this module with ``--worker``), over the transport launch.py
uses on one machine (``DMLC_LOCAL=1``: ZeroMQ over Unix sockets). The worker pushes every
array of resnet18-v1 (shapes only, zeros; weights and BatchNorm statistics, as the summing
modes exchange them) and pulls them back, again and again for ``--seconds``; MB/s counts the
bytes pushed plus the bytes pulled. Next to it, in the same run, the physical limit: the copy
bandwidth of a Unix socket and of TCP on 127.0.0.1 between two processes.

The per-server balance (smallest / largest server's bytes) is computed from MXNet's key
partition (trainer/sharding.py) for the default split bound and for the largest bound of
BOUND_CANDIDATES that reaches TARGET_BALANCE; the throughput is measured for both.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from launcher.supervision import PYTHON, ROOT, Cluster, child_env, free_port
from trainer import sharding

NETWORK = "resnet18-v1"
TARGET_BALANCE = 0.8
BOUND_CANDIDATES = (500_000, 300_000, 200_000, 100_000, 50_000, 20_000)
COPY_BYTES = 64 << 20  # per socket bandwidth probe
CHUNK = 1 << 20


def parameter_shapes(network: str = NETWORK) -> list[tuple[int, ...]]:
    """Every array of ``network`` (weights and BatchNorm statistics) on 32 x 32 RGB input."""
    import mxnet as mx

    from models import get_model

    net = get_model(network)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    return [tuple(p.shape) for p in net.collect_params().values()]


def arrays_of(shapes: list[tuple[int, ...]]) -> list[tuple[int, int, int]]:
    """(key, elements, itemsize) of float32 arrays with keys 0, 1, ... as the trainer uses."""
    sizes = []
    for key, shape in enumerate(shapes):
        elements = 1
        for side in shape:
            elements *= side
        sizes.append((key, elements, 4))
    return sizes


def balanced_bound(arrays: list[tuple[int, int, int]], servers: int) -> int | None:
    """The largest candidate bound whose partition reaches TARGET_BALANCE (None: none)."""
    for bound in BOUND_CANDIDATES:
        if sharding.partition(arrays, servers, bound).balance >= TARGET_BALANCE:
            return bound
    return None


# --- the physical limit ----------------------------------------------------------------------


def _drain(sock: socket.socket, total: int) -> None:
    left = total
    while left > 0:
        chunk = sock.recv(min(CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
    sock.sendall(b"k")


def _copy_rate(family: int) -> float:
    """MB/s of COPY_BYTES sent from this process to another over a socket of ``family``."""
    if family == socket.AF_UNIX:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        left = socket.create_connection(server.getsockname())
        right, _ = server.accept()
        server.close()
    reader = multiprocessing.get_context("fork").Process(target=_drain, args=(right, COPY_BYTES))
    reader.start()
    right.close()
    block = b"\0" * CHUNK
    started = time.perf_counter()
    for _ in range(COPY_BYTES // CHUNK):
        left.sendall(block)
    left.recv(1)
    seconds = time.perf_counter() - started
    left.close()
    reader.join()
    return COPY_BYTES / seconds / 1e6


# --- one cluster -----------------------------------------------------------------------------


def worker_main(seconds: float) -> int:
    """The measuring worker (DMLC_ROLE=worker): one JSON line with its figures."""
    import mxnet as mx

    shapes = parameter_shapes()
    kv = mx.kv.create("dist_sync")
    keys = list(range(len(shapes)))
    pushed = [mx.nd.zeros(s) for s in shapes]
    pulled = [mx.nd.zeros(s) for s in shapes]
    kv.init(keys, pushed)
    total = sum(a.size * 4 for a in pushed)

    def exchange() -> None:
        kv.push(keys, pushed)
        kv.pull(keys, out=pulled)
        mx.nd.waitall()

    for _ in range(2):  # warm-up: the servers allocate their buffers
        exchange()
    rounds, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        exchange()
        rounds += 1
    elapsed = time.perf_counter() - started
    print(json.dumps({"rounds": rounds, "seconds": elapsed, "bytes": 2 * rounds * total}))
    return 0


def measure(servers: int, bound: int | None, seconds: float, folder: Path) -> dict:
    """Start a cluster of ``servers`` servers and the measuring worker; its JSON line."""
    env = {
        "DMLC_PS_ROOT_URI": "127.0.0.1",
        "DMLC_PS_ROOT_PORT": str(free_port()),
        "DMLC_NUM_SERVER": str(servers),
        "DMLC_NUM_WORKER": "1",
        "DMLC_LOCAL": "1",
        **({sharding.BOUND_VAR: str(bound)} if bound else {}),
    }
    with Cluster(folder) as cluster:
        nodes = [("scheduler", "scheduler")] + [(f"server{i}", "server") for i in range(servers)]
        for name, role in nodes:
            cluster.start(name, role, [PYTHON, "main.py"], child_env(1, {**env, "DMLC_ROLE": role}))
        argv = [PYTHON, "-m", "bench.kvstore", "--worker", "--seconds", str(seconds)]
        worker = cluster.start(
            "worker", "worker", argv, child_env(1, {**env, "DMLC_ROLE": "worker"})
        )
        code = worker.popen.wait(timeout=seconds + 180)
        lines = [ln for ln in worker.tail(40).splitlines() if ln.startswith("{")]
        if code != 0 or not lines:
            raise RuntimeError(f"the worker exited with {code}:\n{worker.tail(40)}")
        return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="1,2,4", help="server counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per case")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        return worker_main(opts.seconds)
    try:
        counts = [int(v) for v in opts.servers.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--servers {opts.servers!r}: comma-separated whole numbers, e.g. 1,2,4")
    if not counts or any(not 1 <= n <= 16 for n in counts):
        parser.error(f"--servers {opts.servers!r}: each count in 1..16")
    os.chdir(ROOT)
    arrays = arrays_of(parameter_shapes())
    total = sum(n * size for _, n, size in arrays)
    unix, tcp = _copy_rate(socket.AF_UNIX), _copy_rate(socket.AF_INET)
    print(
        f"{NETWORK}: {len(arrays)} arrays, {total / 1e6:.1f} MB; physical limit on this machine: "
        f"Unix socket {unix:,.0f} MB/s, TCP 127.0.0.1 {tcp:,.0f} MB/s (one copy, one way)\n"
    )
    print("| servers | split bound | balance | MB/s push+pull | vs first row | vs Unix socket |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = None
    with tempfile.TemporaryDirectory(prefix="esync-bench-kvstore-") as tmp:
        for servers in counts:
            bounds = [sharding.DEFAULT_BIGARRAY_BOUND]
            tuned = balanced_bound(arrays, servers) if servers > 1 else None
            if tuned:
                bounds.append(tuned)
            for bound in bounds:
                folder = Path(tmp, f"s{servers}-b{bound}")
                got = measure(servers, bound, opts.seconds, folder)
                rate = got["bytes"] / got["seconds"] / 1e6
                base = base or rate
                balance = sharding.partition(arrays, servers, bound).balance
                print(
                    f"| {servers} | {bound:,} | {balance:.3f} | {rate:,.0f} | {rate / base:.2f} "
                    f"| {rate / unix:.2f} |",
                    flush=True,
                )
    print(
        f"\nbalance target >= {TARGET_BALANCE}: the bound is the largest of "
        f"{', '.join(f'{b:,}' for b in BOUND_CANDIDATES)} that reaches it "
        "(launch.py --bigarray-bound)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
