"""Evaluation off the devices: rank 0 hands parameter snapshots to a separate process.

``--evaluator process`` (the default): rank 0 starts ``python -m trainer.evaluator`` once. When
an evaluation is due and the evaluator is idle, rank 0 writes the round's parameters (Gluon
``save_parameters``, to a tmpfs folder when there is one) and sends one JSON line naming the
file, the round and the round's device time; the evaluator loads them, evaluates the test set
and answers with one JSON line. Rank 0 spends only the snapshot's write on it (``eval_s``),
never the evaluation, and the answer is attached to the next record it writes with the round
and time it belongs to (``eval_round``, ``eval_time``; docs/log-format.md). At most one
snapshot is in flight: a due evaluation waits for an idle evaluator, so a slow evaluator makes
evaluations rarer, never training slower.

An evaluator that dies is reported (a warning and ``evaluator_exit`` in the next record) and
started again, at most ``config.EVALUATOR_RESTARTS`` times; after that rank 0 evaluates inline.
``--evaluator inline`` evaluates in rank 0's process (its time stays out of the device clock,
but the other workers of a synchronous mode wait for it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import config
from launcher.supervision import child_env

EVALUATORS = ("process", "inline")
SNAPSHOT = "snapshot.params"


@dataclass(frozen=True)
class Evaluation:
    """The test accuracy of the parameters after one round."""

    round: int
    time: float  # device time at the end of that round
    test_acc: float
    test_loss: float
    seconds: float  # how long the evaluation itself took

    def fields(self) -> dict[str, Any]:
        """What a record carries of it (docs/log-format.md)."""
        return {
            "test_acc": round(self.test_acc, 6),
            "test_loss": round(self.test_loss, 6),
            "eval_round": self.round,
            "eval_time": round(self.time, 6),
        }


Evaluate = Callable[[], tuple[float, float]]  # (accuracy, loss) of the current parameters


class InlineEvaluator:
    """Evaluates in this process, at once."""

    kind = "inline"

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate
        self._done: list[Evaluation] = []

    def ready(self) -> bool:
        return True

    def submit(self, net: Any, round_no: int, time_s: float) -> None:
        """Evaluate ``net``'s current parameters as those of round ``round_no``."""
        t0 = time.perf_counter()
        acc, loss = self.evaluate()
        self._done.append(Evaluation(round_no, time_s, acc, loss, time.perf_counter() - t0))

    def results(self) -> list[Evaluation]:
        done, self._done = self._done, []
        return done

    def exit_code(self) -> int | None:
        return None

    def drain(self, timeout: float) -> list[Evaluation]:
        return self.results()

    def close(self) -> None:
        return None


def snapshot_folder() -> Path:
    """A private folder for the snapshots: tmpfs when this machine has one."""
    shm = "/dev/shm"
    where = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="esync-eval-", dir=where))


class ProcessEvaluator:
    """Evaluates in a child process ``python -m trainer.evaluator`` (module docstring)."""

    kind = "process"

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.folder = snapshot_folder()
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._in_flight = False
        self._exit: int | None = None
        self._ready = threading.Event()
        root = str(Path(__file__).resolve().parent.parent)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.evaluator", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=child_env(1, drop=("DMLC_", "PS_")),  # one thread; not a ps-lite node
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="evaluator-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                answer = json.loads(line)
                if answer.get("ready"):
                    self._ready.set()
                else:
                    self._answers.put(answer)
        self._exit = self.proc.wait()
        self._answers.put({"exit": self._exit})
        self._ready.set()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the evaluator has its model and data loaded within ``timeout`` s."""
        return self._ready.wait(timeout) and self._exit is None

    def ready(self) -> bool:
        return not self._in_flight and self._exit is None

    def submit(self, net: Any, round_no: int, time_s: float) -> None:
        """Hand the parameters of round ``round_no`` over (call only when ``ready()``)."""
        path = self.folder / SNAPSHOT
        tmp = self.folder / f"{SNAPSHOT}.tmp"
        net.save_parameters(str(tmp))
        os.replace(tmp, path)
        line = json.dumps({"round": round_no, "time": time_s, "path": str(path)})
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            self._in_flight = True
        except (BrokenPipeError, OSError, ValueError):
            pass  # it died; the reader thread says so

    def _take(self, answer: dict[str, Any], done: list[Evaluation]) -> None:
        if "exit" in answer:
            self._in_flight = False
            return
        self._in_flight = False
        done.append(
            Evaluation(
                int(answer["round"]),
                float(answer["time"]),
                float(answer["test_acc"]),
                float(answer["test_loss"]),
                float(answer["seconds"]),
            )
        )

    def results(self) -> list[Evaluation]:
        """The answers that arrived since the last call (never waits)."""
        done: list[Evaluation] = []
        while True:
            try:
                self._take(self._answers.get_nowait(), done)
            except queue.Empty:
                return done

    def drain(self, timeout: float) -> list[Evaluation]:
        """The answers so far, waiting up to ``timeout`` s for the one in flight."""
        done = self.results()
        deadline = time.monotonic() + timeout
        while self._in_flight and self._exit is None and time.monotonic() < deadline:
            try:
                self._take(self._answers.get(timeout=0.05), done)
            except queue.Empty:
                continue
        return done

    def exit_code(self) -> int | None:
        """The evaluator's exit code once it has died, else None."""
        return self._exit

    def close(self) -> None:
        """Stop the evaluator (end of its input, then a kill) and remove the snapshots."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=config.STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class Evaluations:
    """Rank 0's evaluations: the evaluator in use, its restarts, and what to report."""

    def __init__(self, kind: str, argv: list[str], evaluate: Evaluate) -> None:
        self.argv, self.inline = argv, InlineEvaluator(evaluate)
        self.restarts = 0
        self.current: InlineEvaluator | ProcessEvaluator = self.inline
        if kind == "process":
            self.current = ProcessEvaluator(argv)

    def wait_ready(self) -> None:
        """Before training starts: an evaluator that cannot load in time is replaced by
        inline evaluation, with a warning."""
        current = self.current
        if isinstance(current, ProcessEvaluator) and not current.wait_ready(
            config.EVALUATOR_START_S
        ):
            current.close()
            self.current = self.inline
            print(
                f"warning: the evaluator process did not start within "
                f"{config.EVALUATOR_START_S:g} s (exit code {current.exit_code()}); rank 0 "
                "evaluates inline",
                file=sys.stderr,
                flush=True,
            )

    @property
    def pid(self) -> int | None:
        return getattr(self.current, "pid", None)

    def check(self) -> dict[str, Any]:
        """Record fields about an evaluator that died since the last call (and restart it)."""
        code = self.current.exit_code()
        if code is None:
            return {}
        self.current.close()
        if self.restarts < config.EVALUATOR_RESTARTS:
            self.restarts += 1
            self.current = ProcessEvaluator(self.argv)
            then = f"started again ({self.restarts} of {config.EVALUATOR_RESTARTS})"
        else:
            self.current = self.inline
            then = "rank 0 evaluates inline from now on"
        print(
            f"warning: the evaluator process exited with code {code}; training goes on, {then}",
            file=sys.stderr,
            flush=True,
        )
        return {"evaluator_exit": code}

    def results(self) -> list[Evaluation]:
        return self.current.results()

    def submit_if_ready(self, net: Any, round_no: int, time_s: float) -> bool:
        if not self.current.ready():
            return False
        self.current.submit(net, round_no, time_s)
        return True

    def final(self, round_no: int, time_s: float) -> list[Evaluation]:
        """The evaluation in flight (if it comes in time), then the last round's, inline:
        training has stopped, so no device waits for it."""
        done = self.current.drain(config.EVALUATOR_DRAIN_S)
        self.inline.submit(None, round_no, time_s)
        return done + self.inline.results()

    def close(self) -> None:
        self.current.close()


def child_argv(args: argparse.Namespace) -> list[str]:
    """The evaluator's command line, from the worker's flags."""
    argv = ["--network", args.network, "--dataset", args.dataset, "--data-dir", args.data_dir]
    argv += ["--seed", str(args.seed), "--batch-size", str(args.batch_size)]
    if args.gpu is not None and not args.cpu:
        argv += ["--gpu", str(args.gpu)]
    return argv


def main(argv: list[str] | None = None) -> int:
    """The evaluator process: one JSON line in (a snapshot), one JSON line out, until EOF."""
    p = argparse.ArgumentParser(prog="python -m trainer.evaluator")
    p.add_argument("--network", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--gpu", type=int, default=None)
    args = p.parse_args(argv)
    from trainer.network import build_model, evaluate, pick_device
    from utils import load_dataset

    ctx, _ = pick_device(args.gpu, args.gpu is None)
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    model, size = build_model(args.network, args.seed, data, ctx)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        t0 = time.perf_counter()
        model.net.load_parameters(msg["path"], ctx=ctx)
        acc, loss = evaluate(model, data, size, args.batch_size)
        answer = {"round": msg["round"], "time": msg["time"], "test_acc": acc, "test_loss": loss}
        print(json.dumps({**answer, "seconds": time.perf_counter() - t0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
