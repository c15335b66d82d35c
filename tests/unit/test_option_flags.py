"""argtypes.Option: a hyperparameter declared in one line becomes its flag, with the class's
default, and the strategies read them back (trainer/strategy.py)."""

from __future__ import annotations

import argparse
from typing import ClassVar

import pytest

from argtypes import Option, flag01, positive_int
from trainer import registry


class Owner:
    size: ClassVar[int] = 7
    fill: ClassVar[bool] = True
    shared_value: ClassVar[float] = 0.25


def parse(option: Option, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    option.add_to(parser, Owner)
    return parser.parse_args(list(argv))


def test_flag_and_default_come_from_the_name_and_the_class() -> None:
    option = Option("size", positive_int, "how many")
    assert option.long_flag == "--size" and option.dest == "size"
    assert parse(option).size == 7
    assert parse(option, "--size", "3").size == 3


def test_a_bad_value_names_the_flag_and_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    Option("size", positive_int).add_to(parser, Owner)
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "0"])
    err = capsys.readouterr().err
    assert "--size" in err and "got 0" in err


def test_underscores_become_dashes_and_a_flag_may_be_renamed() -> None:
    assert Option("shared_value").long_flag == "--shared-value"
    renamed = Option("fill", flag01, flag="--fill-last-batch")
    assert renamed.dest == "fill_last_batch"
    assert parse(renamed).fill_last_batch == 1  # a bool default becomes the 0/1 flag's int
    assert parse(renamed, "--fill-last-batch", "0").fill_last_batch == 0


def test_aliases_and_choices() -> None:
    option = Option("size", int, aliases=("-sz",), choices=None)
    assert parse(option, "-sz", "4").size == 4
    chosen = Option("shared_value", choices=("a", "b"))
    with pytest.raises(argparse.ArgumentError):
        parse(chosen, "--shared-value", "c")


def test_a_shared_flag_defaults_to_none_so_each_class_keeps_its_own() -> None:
    assert parse(Option("shared_value", float, shared=True)).shared_value is None


def test_every_registered_mode_reads_back_its_defaults_and_flags() -> None:
    from trainer.options import parse_args

    for spec in registry.MODES.values():
        cls = spec.load()
        names = cls.hyperparameter_names()
        assert len(names) == len(set(names)), spec.name
        built = cls.from_args(parse_args(["-m", spec.name]))
        for option in cls.hyperparameters():
            assert getattr(built, option.name) == getattr(cls, option.name), (spec, option)
        assert set(names) <= set(built.describe()), spec.name


def test_a_flag_given_overrides_only_the_modes_that_read_it() -> None:
    from trainer.options import parse_args

    prox = registry.MODES["esync-prox"].load()
    fedavg = registry.MODES["fedavg"].load()
    args = parse_args(["-m", "esync-prox", "--mu", "0.05"])
    assert prox.from_args(args).mu == 0.05
    assert prox.from_args(parse_args(["-m", "esync-prox"])).mu == prox.mu
    assert fedavg.from_args(parse_args(["-m", "fedavg"])).mu == fedavg.mu != prox.mu
