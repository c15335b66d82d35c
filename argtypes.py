"""argparse ``type=`` functions shared by every command line of the tree (main.py, launch.py,
``python -m data.fetch``, the strategies' own flags): each returns the converted value or
raises ArgumentTypeError, whose message argparse prints after the flag's name, so the
messages name the value given. :class:`Option` is the one-line declaration of a class's
hyperparameter flag (trainer/strategy.py, trainer/pacing.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import config


def bounded_int(name: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low`` (and <= ``high``); ``name`` is what
    argparse calls it when the text is not a number ("invalid positive_int value")."""

    def check(text: str) -> int:
        value = int(text)
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    check.__name__ = name
    return check


positive_int = bounded_int("positive_int", 1)
non_negative_int = bounded_int("non_negative_int", 0)
server_count = bounded_int("server_count", 1, config.MAX_SERVERS)  # parameter servers


def non_negative_float(text: str) -> float:
    value = float(text)
    # "not >=" also rejects NaN, which every comparison fails
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def flag01(text: str) -> int:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"must be 0 or 1, got {text!r}")
    return int(text)


def port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


def host_port(text: str) -> tuple[str, int]:
    host, _, number = text.rpartition(":")
    if not host or not number.isdigit() or not 1 <= int(number) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(number)


def http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value


def unit_interval(text: str) -> float:
    value = non_negative_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def momentum(text: str) -> float:
    value = non_negative_float(text)
    if not value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


@dataclass(frozen=True)
class Option:
    """A hyperparameter of a class and its flag, declared in one line: the attribute ``name``
    (whose class value is the default), the flag ``--name-with-dashes`` unless ``flag`` says
    otherwise, ``aliases`` such as upstream's ``-gl``.

    ``shared``: several classes read the flag with defaults of their own (``--mu``), so the
    flag's default is None and each class keeps its own when the flag is not given.
    """

    name: str
    type: Callable[[str], Any] | None = None
    help: str = ""
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    choices: Sequence[str] | None = None
    shared: bool = False

    @property
    def long_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute of the parsed namespace (argparse's rule for a long flag)."""
        return self.long_flag.removeprefix("--").replace("-", "_")

    def add_to(
        self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, owner: type
    ) -> None:
        default = None if self.shared else getattr(owner, self.name)
        if isinstance(default, bool):  # a 0/1 flag (flag01)
            default = int(default)
        extra: dict[str, Any] = {"type": self.type} if self.type else {}
        if self.choices is not None:
            extra["choices"] = self.choices
        parser.add_argument(
            *self.aliases, self.long_flag, dest=self.dest, default=default, help=self.help, **extra
        )
