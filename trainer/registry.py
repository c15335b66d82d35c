"""The training modes: one table from a mode's name to everything the tree needs to know of it.

Adding a mode is one strategy class (see :mod:`trainer.strategy`) and one entry in ``MODES``;
main.py, launch.py, summary.py, draw.py, report.py, the benchmarks and the tests read the table.
This module does not import MXNet (the launcher and the report tools use it), so each entry
names its strategy class by its dotted path, as Django settings name classes.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.strategy import Strategy


@dataclass(frozen=True)
class ModeSpec:
    """One training mode."""

    name: str  # -m value, log folder name, --compare name
    strategy: str  # "module:Class" of its trainer.strategy.Strategy subclass
    kv_type: str | None  # MXNet KVStore type; None: standalone, no cluster
    label: str  # legend and table name
    color: str  # matplotlib colour of its curves and bars
    help: str  # one line for --help
    state_server: bool = False  # its workers talk to the State Server
    upstream_alias: tuple[str, str] | None = None  # (-m value, flag): upstream's `-m a -flag 1`

    @property
    def distributed(self) -> bool:
        """True when the mode runs on an MXNet cluster (scheduler, server, workers)."""
        return self.kv_type is not None

    def load(self) -> type[Strategy]:
        """The strategy class (imports MXNet)."""
        module, _, cls = self.strategy.partition(":")
        return getattr(importlib.import_module(module), cls)


MODES: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        ModeSpec(
            "esync",
            "trainer.modes:ESync",
            "dist_sync",
            "ESync",
            "tab:red",
            "ESync (paper Alg. 1): local steps until the State Server says sync",
            state_server=True,
        ),
        ModeSpec(
            "sync", "trainer.modes:SSGD", "dist_sync", "Sync", "tab:blue", "SSGD: summed gradients"
        ),
        ModeSpec(
            "async",
            "trainer.modes:ASGD",
            "dist_async",
            "Async",
            "tab:orange",
            "ASGD: SGD on the parameter server",
        ),
        ModeSpec(
            "dcasgd",
            "trainer.modes:DCASGD",
            "dist_async",
            "DC-ASGD",
            "tab:green",
            "DC-ASGD: delay-compensated ASGD on the server",
            upstream_alias=("async", "-dcasgd"),
        ),
        ModeSpec(
            "local",
            "trainer.modes:Standalone",
            None,
            "Standalone",
            "dimgray",
            "standalone training on one device",
        ),
        ModeSpec(
            "esync-nova",
            "trainer.federated:ESyncNova",
            "dist_sync",
            "ESync-Nova",
            "tab:pink",
            "ESync with FedNova's normalised average: w += gl * mean(Δw_i / k_i) * mean(k_i)",
            state_server=True,
        ),
        ModeSpec(
            "esync-prox",
            "trainer.federated:ESyncProx",
            "dist_sync",
            "ESync-Prox",
            "tab:cyan",
            "ESync whose local steps add FedProx's proximal term mu (w - w_global)",
            state_server=True,
        ),
        ModeSpec(
            "esync-m",
            "trainer.federated:ESyncM",
            "dist_sync",
            "ESync-M",
            "darkred",
            "ESync with server momentum on the global step: v = beta v + mean(Δw), w += gl v",
            state_server=True,
        ),
        ModeSpec(
            "esync-scaffold",
            "trainer.federated:ESyncScaffold",
            "dist_sync",
            "ESync-SCAFFOLD",
            "tab:olive",
            "ESync whose local steps are corrected by SCAFFOLD's control variates: g + c - c_i",
            state_server=True,
        ),
        ModeSpec(
            "fedavg",
            "trainer.federated:FedAvg",
            "dist_sync",
            "FedAvg",
            "tab:purple",
            "FedAvg: --local-steps E on every worker, then average (FedProx with --mu)",
        ),
        ModeSpec(
            "fedasync",
            "trainer.federated:FedAsync",
            "dist_async",
            "FedAsync",
            "tab:brown",
            "FedAsync: E local steps, the server mixes the model in by staleness",
        ),
        ModeSpec(
            "fedbuff",
            "trainer.fedbuff:FedBuff",
            "dist_async",
            "FedBuff",
            "goldenrod",
            "FedBuff: E local steps, the server applies the mean of every K updates by staleness",
        ),
    )
}

REFERENCE = "esync"  # the mode every other mode is compared with in reports


class UnknownModeError(ValueError):
    """A mode name that is not in the registry; the text lists the choices."""


def names() -> tuple[str, ...]:
    """Every mode name, in table order."""
    return tuple(MODES)


def get(name: str) -> ModeSpec:
    """The entry of ``name``; :class:`UnknownModeError` lists the choices."""
    try:
        return MODES[name]
    except KeyError:
        raise UnknownModeError(f"unknown mode {name!r} (choose from {', '.join(MODES)})") from None


GROUPS = {
    "all": lambda spec: True,
    "distributed": lambda spec: spec.distributed,
}
"""Names that stand for several modes in ``--compare`` (``all`` is every registered mode)."""


def select(text: str) -> list[str]:
    """The modes of a comma-separated list of names and groups (``all``, ``distributed``),
    in the order given, each once; :class:`UnknownModeError` names the unknown ones."""
    chosen: list[str] = []
    unknown: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item in GROUPS:
            chosen += [s.name for s in MODES.values() if GROUPS[item](s)]
        elif item in MODES:
            chosen.append(item)
        elif item:
            unknown.append(item)
    if unknown:
        raise UnknownModeError(
            f"unknown mode(s) {', '.join(unknown)} (choose from {', '.join(MODES)}, "
            f"or {', '.join(GROUPS)})"
        )
    return list(dict.fromkeys(chosen))


def alias_flags() -> dict[str, ModeSpec]:
    """Upstream's selector flags (``-dcasgd``) and the entry each one selects."""
    return {s.upstream_alias[1]: s for s in MODES.values() if s.upstream_alias is not None}


def resolve(mode: str, flags_on: set[str] = frozenset()) -> ModeSpec:
    """The entry that ``-m mode`` plus upstream's selector flags set to 1 name.

    ``-m async -dcasgd 1`` is upstream's spelling of ``-m dcasgd``; a selector flag with any
    other mode is an error.
    """
    spec = get(mode)
    for flag in sorted(flags_on):
        target = alias_flags()[flag]
        base = target.upstream_alias[0] if target.upstream_alias else target.name
        if mode not in (base, target.name):
            raise UnknownModeError(f"{flag} 1 applies to -m {base} only, not -m {mode}")
        spec = target
    return spec


def add_mode_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``-m`` (every registered mode) and upstream's selector flags, for main.py and launch.py."""
    parser.add_argument(
        "-m",
        "--mode",
        choices=names(),
        default=default,
        help="; ".join(f"{s.name}: {s.help}" for s in MODES.values()),
    )
    for flag, spec in alias_flags().items():
        parser.add_argument(
            flag,
            "-" + flag,
            dest=flag.lstrip("-"),
            type=int,
            choices=(0, 1),
            default=0,
            help=f"1: upstream's spelling of -m {spec.name} (with -m {spec.upstream_alias[0]})",
        )


def resolve_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Apply upstream's selector flags to ``args.mode`` (see ``resolve``); argparse errors."""
    flags_on = {flag for flag in alias_flags() if getattr(args, flag.lstrip("-"))}
    try:
        args.mode = resolve(args.mode, flags_on).name
    except UnknownModeError as exc:
        parser.error(str(exc))
