"""Mutation check: break the algorithms on purpose and make sure the tests notice.

    .venv/bin/python tests/mutants.py            # every mutant (make mutants)
    .venv/bin/python tests/mutants.py NAME ...   # only these
    .venv/bin/python tests/mutants.py --list
    .venv/bin/python tests/mutants.py NAME --tests tests/e2e/test_async_modes.py  # other killers

Each mutant replaces one exact snippet of one file and names the tests that must fail on it
(fast ones; a cluster test only where nothing faster can tell). The tree (``git ls-files``:
tracked and untracked-but-not-ignored files, so no .venv and no logs) is copied to a scratch
directory once; the mutants are applied there one at a time, and the tests run there with the
project's .venv python. First the same tests run on the unmutated copy: a test that fails
without a mutation would "kill" everything. Output: one line per mutant, ``killed`` or
``SURVIVED``, then ``killed K of N``. Exit code 0 when every mutant is killed, 1 when one
survives (or the tests fail without mutation), 2 when a snippet is not found (the code moved:
update the snippet here).

Not collected by pytest (the name does not start with ``test_``) and not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
RUN_TIMEOUT_S = 900  # one mutant's test run; a hang counts as killed (the tests did not pass)

MATHS = "tests/unit/test_update_maths.py"
PROPS = "tests/unit/test_scheduler_properties.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repo root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, fastest first (pytest stops at a failure)
    what: str = ""


MUTANTS: list[Mutant] = [
    Mutant(
        "esync-sums-deltas",
        "trainer/aggregate.py",
        "scale = global_lr / num_workers",
        "scale = global_lr",
        (f"{MATHS}::test_esync_global_step_is_global_lr_times_the_mean_delta",),
        "ESync's global step sums the workers' deltas instead of averaging them",
    ),
    Mutant(
        "async-on-dist-sync",
        "trainer/registry.py",
        '"trainer.modes:ASGD",\n            "dist_async",',
        '"trainer.modes:ASGD",\n            "dist_sync",',
        (
            "tests/e2e/test_registry.py::test_every_entry_loads_a_strategy_and_parses",
            "tests/e2e/test_async_modes.py",
        ),
        "async runs on a dist_sync KVStore",
    ),
    Mutant(
        "dcasgd-runs-sgd",
        "trainer/modes.py",
        "return mx.optimizer.DCASGD(learning_rate=self.lr,",
        "return mx.optimizer.SGD(learning_rate=self.lr,",
        (f"{MATHS}::test_dcasgd_server_compensates_the_delay",),
        "-m dcasgd / -dcasgd 1 runs plain SGD on the server",
    ),
    Mutant(
        "scheduler-plain-ssgd",
        "StateServer/scheduler.py",
        "if asker.k == 0:\n            return COMPUTE",
        "if asker.k == 0:\n            return COMPUTE\n"
        "        if asker.k >= 1:\n            return SYNC",
        (PROPS,),
        "Alg. 2 answers sync as soon as k >= 1 (plain SSGD)",
    ),
    Mutant(
        "client-no-stale-retry",
        "trainer/state_client.py",
        "stale = reused and attempts == 1",
        "stale = False",
        (
            "tests/integration/test_client_transport.py::test_a_stale_keep_alive_connection_is_retried_at_once",
        ),
        "the client backs off instead of retrying a stale keep-alive connection at once",
    ),
    Mutant(
        "close-request-keeps-slot",
        "StateServer/stateserver/fastserver.py",
        "            self._open.discard(id(request))\n",
        "            pass\n",
        ("tests/integration/test_state_limits.py::test_closed_connections_free_their_slot",),
        "runserver's close_request no longer frees a connection slot",
    ),
    Mutant(
        "ssgd-no-rescale",
        "trainer/modes.py",
        "aggregate.sgd_step(model.params, sums.values, self.lr, 1.0 / self.batch_size)",
        "aggregate.sgd_step(model.params, sums.values, self.lr, 1.0)",
        (f"{MATHS}::test_ssgd_applies_lr_times_the_sum_of_mean_gradients_and_averages_batchnorm",),
        "SSGD steps with summed instead of mean gradients (wrong scale)",
    ),
    Mutant(
        "asgd-no-rescale",
        "trainer/modes.py",
        "return mx.optimizer.SGD(learning_rate=self.lr, rescale_grad=1.0 / self.batch_size)",
        "return mx.optimizer.SGD(learning_rate=self.lr, rescale_grad=1.0)",
        (f"{MATHS}::test_asgd_server_runs_sgd_on_every_push",),
        "the ASGD server optimizer does not rescale the summed gradient (wrong scale)",
    ),
    Mutant(
        "sgd-step-adds",
        "trainer/aggregate.py",
        "mx.nd.sgd_update(w, g, lr=lr,",
        "mx.nd.sgd_update(w, g, lr=-lr,",
        (f"{MATHS}::test_sgd_step_is_w_minus_lr_times_mean_gradient",),
        "the SGD step adds the gradient (wrong sign)",
    ),
    Mutant(
        "esync-delta-reversed",
        "trainer/aggregate.py",
        "return [w - g for w, g in zip(replica, reference, strict=True)]",
        "return [g - w for w, g in zip(replica, reference, strict=True)]",
        (f"{MATHS}::test_esync_global_step_is_global_lr_times_the_mean_delta",),
        "Δw = reference - replica (ESync moves against its local progress)",
    ),
    Mutant(
        "batchnorm-not-averaged",
        "trainer/aggregate.py",
        "target[:] = total / num_workers",
        "target[:] = total",
        (f"{MATHS}::test_ssgd_applies_lr_times_the_sum_of_mean_gradients_and_averages_batchnorm",),
        "BatchNorm running statistics summed, not divided by p",
    ),
    Mutant(
        "stop-vote-own-only",
        "trainer/modes.py",
        "aggregate.stop_vote(self.sums[-1].asscalar()),",
        "stop,",
        (f"{MATHS}::test_a_stop_vote_of_any_worker_stops_every_worker",),
        "the stop vote ignores the other workers",
    ),
    Mutant(
        "esync-replica-not-reset",
        "trainer/modes.py",
        "        aggregate.copy_into(model.params, self.global_params)\n",
        "        pass\n",
        (f"{MATHS}::test_esync_global_step_is_global_lr_times_the_mean_delta",),
        "after a sync the ESync replica keeps its local weights instead of the global ones",
    ),
    Mutant(
        "esync-local-lr-is-l",
        "trainer/modes.py",
        'lr_flag = "local_lr"\n    global_lr',
        'lr_flag = "lr"\n    global_lr',
        (
            "tests/unit/test_esync_flags.py::test_esync_local_steps_use_ll_and_the_flags_reach_alg_1",
        ),
        "ESync's local SGD step uses -l instead of -ll",
    ),
    Mutant(
        "standalone-update-skipped",
        "trainer/modes.py",
        'nothing to synchronise."""\n\n    def local_update(self, model: Model) -> None:\n',
        'nothing to synchronise."""\n\n    def local_update(self, model: Model) -> None:\n'
        "        return None\n",
        (f"{MATHS}::test_standalone_steps_after_every_batch",),
        "the standalone trainer never updates its weights",
    ),
    Mutant(
        "scheduler-ignores-epsilon",
        "StateServer/scheduler.py",
        "asker.c + self.db.epsilon > rest",
        "asker.c > rest",
        (PROPS,),
        "Alg. 2 without its margin epsilon",
    ),
    Mutant(
        "scheduler-waits-for-fastest",
        "StateServer/scheduler.py",
        "return (rec.c, rec.t < current_round,",
        "return (-rec.c, rec.t < current_round,",
        (PROPS,),
        "Alg. 2 takes the fastest worker for the straggler",
    ),
    Mutant(
        "client-503-not-retried",
        "trainer/state_client.py",
        "if status != 503:",
        "if True:",
        (
            "tests/integration/test_client_transport.py::test_http_503_is_retried_with_backoff_until_served",
            "tests/integration/test_client_transport.py::test_http_503_for_longer_than_retry_for_is_unreachable",
        ),
        "an overloaded server's 503 is not retried",
    ),
    Mutant(
        "esync-m-no-momentum",
        "trainer/aggregate.py",
        "v[:] = v * beta + total / num_workers",
        "v[:] = total / num_workers",
        (f"{MATHS}::test_esync_m_steps_by_the_velocity_of_the_mean_deltas",),
        "ESync-M forgets its velocity: plain Alg. 1",
    ),
    Mutant(
        "scaffold-variate-after-pull",
        "trainer/federated.py",
        "        aggregate.copy_into(self.c_local, variate)\n        return aggregate.deltas",
        "        return aggregate.deltas",
        (f"{MATHS}::test_esync_scaffold_corrects_local_steps_by_the_control_variates",),
        "ESync-SCAFFOLD keeps its control variate after the KVStore overwrote it",
    ),
    Mutant(
        "fedbuff-no-staleness-weight",
        "trainer/aggregate.py",
        "buffer[0:n] += pushed[0:n] * weight",
        "buffer[0:n] += pushed[0:n]",
        (f"{MATHS}::test_fedbuff_applies_the_staleness_weighted_mean_of_every_k_updates",),
        "FedBuff buffers stale updates at full weight",
    ),
    Mutant(
        "fedbuff-sums-the-buffer",
        "trainer/aggregate.py",
        "stored[0:n] += buffer[0:n] * (server_lr / buffer_size)",
        "stored[0:n] += buffer[0:n] * server_lr",
        (f"{MATHS}::test_fedbuff_applies_the_staleness_weighted_mean_of_every_k_updates",),
        "FedBuff applies the sum of the buffered updates instead of their mean",
    ),
]


def tree_files() -> list[str]:
    """Tracked files and untracked ones that are not ignored (no .venv, no logs, no data)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


def check_snippets(mutants: list[Mutant]) -> list[str]:
    """One problem per mutant whose snippet is missing or ambiguous in the working tree."""
    problems = []
    for m in mutants:
        try:
            text = (ROOT / m.path).read_text()
        except OSError as exc:
            problems.append(f"mutant {m.name}: cannot read {m.path}: {exc}")
            continue
        count = text.count(m.old)
        if count != 1:
            why = "not found" if count == 0 else f"found {count} times"
            problems.append(
                f"mutant {m.name}: snippet {why} in {m.path} (the code moved? update "
                f"tests/mutants.py): {m.old!r}"
            )
    return problems


def copy_tree(dest: Path) -> None:
    for rel in tree_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def run_tests(workdir: Path, tests: tuple[str, ...] | list[str]) -> tuple[int | None, str]:
    """pytest on ``tests`` in ``workdir``: (exit code or None on a time-out, output tail)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMLC_", "PS_", "PYTEST_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [str(VENV_PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:warnings", "--tb=short", *tests]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out[-3000:]
    return proc.returncode, out[-3000:]


def run_mutant(work: Path, m: Mutant, tests: tuple[str, ...], verbose: bool) -> bool:
    """Apply ``m`` in the scratch tree, run ``tests``, restore the file; True when killed."""
    target = work / m.path
    original = target.read_text()
    target.write_text(original.replace(m.old, m.new, 1))
    started = time.monotonic()
    try:
        code, out = run_tests(work, tests)
    finally:
        target.write_text(original)
    if code == 1:
        verdict = "killed"
    elif code is None:
        verdict = "killed (time-out)"
    elif code == 0:
        verdict = "SURVIVED"
    else:  # 2-5: interrupted, internal or usage error, nothing collected
        verdict = f"SURVIVED (pytest exit {code}: the tests did not run)"
    by = ", ".join(t.rsplit("/", 1)[-1] for t in tests)
    print(f"{verdict:9} {m.name:28} {time.monotonic() - started:5.1f} s  by {by}", flush=True)
    if verbose or verdict.startswith("SURVIVED"):
        print("    " + out.replace("\n", "\n    ")[-1500:])
    return verdict.startswith("killed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of each mutant's")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = parser.parse_args(argv)

    by_name = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; see --list")
    selected = [by_name[n] for n in args.names] or MUTANTS
    if args.list:
        for m in selected:
            print(f"{m.name:28} {m.path:40} {m.what}")
        return 0
    problems = check_snippets(selected)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if not VENV_PYTHON.exists():
        print(f"{VENV_PYTHON} is missing: run make first", file=sys.stderr)
        return 2

    def tests_of(m: Mutant) -> tuple[str, ...]:
        return tuple(args.tests) if args.tests else m.tests

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="esync-mutants-") as scratch:
        work = Path(scratch) / "tree"
        copy_tree(work)
        baseline = list(dict.fromkeys(t for m in selected for t in tests_of(m)))
        code, out = run_tests(work, baseline)
        if code != 0:
            print(f"the tests fail WITHOUT any mutation (exit {code}):\n{out}", file=sys.stderr)
            return 1
        took = time.monotonic() - started
        print(f"baseline: the {len(baseline)} test ids pass without mutation ({took:.0f} s)")
        killed = sum(run_mutant(work, m, tests_of(m), args.verbose) for m in selected)
    print(f"killed {killed} of {len(selected)} ({time.monotonic() - started:.0f} s)")
    return 0 if killed == len(selected) else 1


if __name__ == "__main__":
    sys.exit(main())
