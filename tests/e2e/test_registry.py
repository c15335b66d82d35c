"""The mode registry: every registered mode works end to end, and a new entry is all it takes."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

import draw
import report
import summary
from launcher import cli
from tests.support.processes import run_py
from tests.support.run_logs import worker_folders
from trainer import layout, registry
from trainer.options import build_parser, parse_args
from trainer.strategy import Strategy


@pytest.mark.parametrize("name", registry.names())
def test_every_entry_loads_a_strategy_and_parses(name: str) -> None:
    spec = registry.get(name)
    cls = spec.load()
    assert issubclass(cls, Strategy) and cls is not Strategy
    assert cls.synchronous == (spec.kv_type == "dist_sync"), name
    assert parse_args(["-m", name]).mode == name
    opts = cli.build_parser().parse_known_args(["--compare", name])[0]
    assert opts.compare == name
    run_dir = layout.mode_dir_name(name, True)
    assert layout.mode_of(run_dir) == name and layout.split_of(run_dir) == "niid"


def test_unknown_mode_lists_every_registered_one() -> None:
    with pytest.raises(registry.UnknownModeError) as err:
        registry.get("fedbogus")
    assert all(name in str(err.value) for name in registry.names())


def test_upstream_alias_selects_its_entry_and_nothing_else() -> None:
    for flag, spec in registry.alias_flags().items():
        base = spec.upstream_alias[0]
        args = parse_args(["-m", base, flag, "1"])
        assert args.mode == spec.name
        others = [n for n in registry.names() if n not in (base, spec.name)]
        with pytest.raises(SystemExit):
            parse_args(["-m", others[0], flag, "1"])


def _fake_run(log_dir: str, run_dir: str, workers: int) -> None:
    """Records of a finished run, as main.py writes them (layout and format)."""
    for rank in range(workers):
        folder = layout.worker_dir(log_dir, "lenet", run_dir, "hostA", "cpu", rank)
        folder.mkdir(parents=True)
        meta = {"rank": rank, "num_workers": workers, "slowdown": 1.0 + rank, "split": "iid"}
        (folder / layout.META_NAME).write_text(json.dumps(meta))
        rows = [
            {"round": r, "time": 0.5 * r, "samples": 64, "compute_s": 0.4, "bytes_pushed": 10}
            | ({"test_acc": 0.2 * r, "test_loss": 1.0 / r} if rank == 0 else {})
            for r in range(1, 6)
        ]
        (folder / layout.ROUNDS_NAME).write_text("".join(json.dumps(x) + "\n" for x in rows))


def test_a_new_entry_is_all_a_new_mode_needs(monkeypatch, log_dir: str) -> None:
    """Register a mode in the table only: the parsers, summary, figures and report take it."""
    new = replace(registry.get("sync"), name="halfsync", label="Half-Sync", color="tab:purple")
    monkeypatch.setitem(registry.MODES, new.name, new)
    assert parse_args(["-m", "halfsync"]).mode == "halfsync"
    assert "halfsync" in build_parser().format_help()
    for mode in (registry.REFERENCE, "halfsync"):
        _fake_run(log_dir, mode, 2)
    assert set(summary.load_all(log_dir, "lenet")) == {registry.REFERENCE, "halfsync"}
    paths = draw.draw_all(log_dir, "lenet", 0.5)
    assert any(p.endswith("accuracy_iid.png") for p in paths)
    md, js = report.write_report(log_dir, "lenet", [registry.REFERENCE, "halfsync"], 0.5)
    with open(js) as fh:
        assert "halfsync" in json.load(fh)["esync_vs"]
    with open(md) as fh:
        assert "halfsync" in fh.read()
    assert draw.label("halfsync") == "Half-Sync"


@pytest.mark.slow
def test_every_registered_mode_runs_on_two_workers_and_reaches_the_report(log_dir: str) -> None:
    names = registry.names()
    flags = "-w 2 --slowdowns 1,2 --rounds 100000 --max-time 3 -e 0 --eval-interval 1"
    res = run_py(
        ["launch.py", "--compare", ",".join(names), *flags.split(), "--target", "0.3"]
        + ["-ld", log_dir, "--timeout", "90"],
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(os.path.join(log_dir, "lenet", "report.json")) as fh:
        modes = json.load(fh)["modes"]
    assert list(modes) == list(names)
    for name in names:
        spec = registry.get(name)
        folders = worker_folders(log_dir, "lenet", name)
        assert sorted(folders) == ([0, 1] if spec.distributed else [0]), name
        with open(os.path.join(folders[0], layout.META_NAME)) as fh:
            assert json.load(fh)["mode"] == name
        assert modes[name]["num_workers"] == len(folders)
        assert modes[name]["final_accuracy"] is not None, name
        assert f"| {name} |" in res.stdout or f"{name} " in res.stdout, name


def test_compare_groups_expand_from_the_registry_in_table_order() -> None:
    assert registry.select("all") == list(registry.names())
    distributed = registry.select("distributed")
    assert distributed == [s.name for s in registry.MODES.values() if s.kv_type is not None]
    assert "local" not in distributed and len(distributed) == len(registry.MODES) - 1
    assert registry.select("sync, esync,sync,,local") == ["sync", "esync", "local"]
    with pytest.raises(registry.UnknownModeError, match=r"unknown mode\(s\) nova, x \(choose"):
        registry.select("esync,nova,x")
