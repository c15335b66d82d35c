"""``--slowdowns`` lists (one emulated device per worker), the device probe and the device
unit T0 every mode of a launch shares."""

from __future__ import annotations

import argparse
import json
import subprocess

from launcher.supervision import PYTHON, ROOT, LaunchError, child_env
from trainer import calibrate, registry
from trainer.slowdown import Schedule, ScheduleError


class SlowdownCountError(ValueError):
    """A slowdown list whose length fits neither one device nor all of them."""

    def __init__(self, given: int, wanted: int) -> None:
        super().__init__(f"{given} slowdown entries for {wanted} devices")
        self.given = given


def check_slowdown(entry: str) -> None:
    """ScheduleError unless ``entry`` is a factor, a schedule or a readable ``.csv`` trace."""
    schedule_of(entry)


def per_device(entries: list[str], count: int) -> list[str]:
    """One checked entry per device; a single entry is used for every device.

    The one place both the ``--slowdowns`` flag and a host file's ``slowdown=`` field are
    expanded and checked (SlowdownCountError, ScheduleError); callers word the error."""
    if len(entries) == 1:
        entries = entries * count
    if len(entries) != count:
        raise SlowdownCountError(len(entries), count)
    for entry in entries:
        check_slowdown(entry)
    return entries


def parse_slowdowns(text: str, workers: int) -> list[str]:
    """``1,1,4,16`` -> one emulated device per worker (one entry is used for every worker).

    An entry is a factor ``S``, a schedule ``S0/S1@T1/...`` or the path of a CSV trace (ending
    in ``.csv``); each is checked here, before any process starts.
    """
    entries = [v.strip() for v in text.split(",") if v.strip()]
    try:
        return per_device(entries, workers)
    except SlowdownCountError as exc:
        raise argparse.ArgumentTypeError(
            f"--slowdowns has {exc.given} values for {workers} workers"
        ) from None
    except ScheduleError as exc:
        raise argparse.ArgumentTypeError(f"--slowdowns: {exc}") from None


def schedule_of(entry: str) -> Schedule:
    """The schedule of one ``--slowdowns`` entry (checked by parse_slowdowns)."""
    return Schedule.from_trace(entry) if entry.endswith(".csv") else Schedule.parse(entry)


def probe_device(opts: argparse.Namespace, forwarded: list[str]) -> float:
    """Seconds of one training batch of this network on an idle worker process (main.py
    --probe-device, with the threads and flags the workers get)."""
    argv = [PYTHON, "main.py", "-m", "local", "-n", opts.network, *forwarded, "--probe-device"]
    run = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, env=child_env(opts.threads), timeout=300
    )
    lines = run.stdout.strip().splitlines()
    try:
        return float(json.loads(lines[-1])["probe_s"])
    except (IndexError, KeyError, ValueError):
        raise LaunchError(
            f"the device probe failed (exit code {run.returncode}): "
            f"{(run.stderr or run.stdout).strip()[-800:]}"
        ) from None


def device_unit(opts: argparse.Namespace, forwarded: list[str]) -> list[str]:
    """main.py's emulation flags for every mode of this launch; with device emulation the
    device unit T0, the same for every mode (calibrated here unless --device-unit is given),
    and what it means for this machine. UnitError for a mix that cannot fit."""
    flags = ["--emulation", opts.emulation, "--evaluator", opts.evaluator]
    if opts.emulation != "device":
        return flags
    distributed = any(registry.get(m).distributed for m in opts.modes)
    schedules = [schedule_of(e) for e in opts.slowdowns] if distributed else [Schedule.constant(1)]
    probe_s = probe_device(opts, forwarded) if opts.device_unit is None else float("nan")
    plan = calibrate.plan_unit(
        probe_s, schedules, calibrate.machine_cores(), opts.threads, opts.device_unit
    )
    if opts.device_unit is None:
        print(f"devices: {plan.describe(len(schedules))}", flush=True)
    else:
        print(f"devices: device unit T0 = {plan.unit_s * 1e3:.2f} ms (--device-unit)", flush=True)
    return [*flags, "--device-unit", f"{plan.unit_s:.9g}"]


def slowdown_flags(entry: str) -> list[str]:
    """main.py's flags of one ``--slowdowns`` entry."""
    return ["--slowdown-trace", entry] if entry.endswith(".csv") else ["--slowdown", entry]
