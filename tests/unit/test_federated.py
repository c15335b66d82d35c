"""trainer/federated.py's flags and registry entries.

The update arithmetic of every class is checked by hand in tests/unit/test_update_maths.py;
here: the algorithm flags reject nonsense with argparse errors, ``--mu`` defaults per mode.
The server optimizer's trip to the parameter server is
tests/integration/test_federated_pickle.py's, a real cluster of each new mode
tests/e2e/test_federated_cluster.py's.
"""

from __future__ import annotations

import pytest

from trainer import aggregate, registry
from trainer.federated import ESyncM, ESyncNova, ESyncProx, FedAsync, FedAvg
from trainer.options import parse_args
from trainer.pacing import FixedSteps

NEW_MODES = ("esync-nova", "esync-prox", "esync-m", "esync-scaffold", "fedavg", "fedasync")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--local-steps", "0"], "argument --local-steps: must be >= 1, got 0"),
        (["--local-steps", "2.5"], "argument --local-steps: invalid positive_int value"),
        (["--alpha", "0"], "argument --alpha: must be in (0, 1], got 0"),
        (["--alpha", "1.5"], "argument --alpha: must be in (0, 1], got 1.5"),
        (["--alpha", "nan"], "argument --alpha: must be a finite number >= 0, got nan"),
        (["--staleness", "linear"], "argument --staleness: invalid choice: 'linear'"),
        (["--staleness-a", "-1"], "argument --staleness-a: must be a finite number >= 0"),
        (["--staleness-b", "inf"], "argument --staleness-b: must be a finite number >= 0"),
        (["--mu", "-0.1"], "argument --mu: must be a finite number >= 0, got -0.1"),
        (["--mu", "x"], "argument --mu: invalid non_negative_float value: 'x'"),
        (["--server-momentum", "1"], "argument --server-momentum: must be in [0, 1), got 1"),
        (["--server-momentum", "-0.5"], "argument --server-momentum: must be a finite number"),
    ],
)
def test_nonsense_algorithm_flags_are_argparse_errors(capsys, flags, message) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["-m", "fedasync", *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_staleness_choices_are_the_functions_the_server_knows() -> None:
    for kind in ("constant", "polynomial", "hinge"):
        assert parse_args(["--staleness", kind]).staleness == kind
        FedAsync(0.1, 4, staleness=kind).server_optimizer()
    with pytest.raises(ValueError, match="unknown staleness function 'linear'"):
        FedAsync(0.1, 4, staleness="linear").server_optimizer()


def test_flags_reach_the_strategies_and_mu_defaults_per_mode() -> None:
    fedavg = FedAvg.from_args(parse_args(["-m", "fedavg"]))
    assert fedavg.mu == FedAvg.mu == 0.0  # without --mu: plain FedAvg
    assert fedavg.pacing.local_steps == FixedSteps.local_steps
    prox = ESyncProx.from_args(parse_args(["-m", "esync-prox"]))
    assert prox.mu == ESyncProx.mu > 0
    for name in ("fedavg", "esync-prox"):
        args = parse_args(["-m", name, "--mu", "0.25", "-ll", "0.01", "--local-steps", "3"])
        mode = registry.get(name).load().from_args(args)
        assert mode.mu == 0.25 and mode.lr == 0.01, name
    default = ESyncM.from_args(parse_args(["-m", "esync-m"])).server_momentum
    assert default == ESyncM.server_momentum > 0
    args = parse_args(["-m", "esync-m", "--server-momentum", "0"])
    assert ESyncM.from_args(args).server_momentum == 0.0  # Alg. 1 as written
    nova = ESyncNova.from_args(parse_args(["-m", "esync-nova", "-gl", "2", "-ll", "0.03"]))
    assert (nova.global_lr, nova.lr) == (2.0, 0.03)
    args = parse_args(["-m", "fedasync", "--alpha", "0.3", "--staleness", "hinge"])
    fedasync = FedAsync.from_args(args)
    mixer = fedasync.server_optimizer()
    assert mixer.rule is aggregate.fedasync_mix
    assert mixer.params == {
        "alpha": 0.3,
        "kind": "hinge",
        "a": FedAsync.staleness_a,
        "b": FedAsync.staleness_b,
    }
    assert fedasync.describe()["server_optimizer"] == "ServerRule(fedasync_mix)"


def test_registry_entries_of_the_new_modes() -> None:
    colours = [spec.color for spec in registry.MODES.values()]
    assert len(set(colours)) == len(colours)
    for name in NEW_MODES:
        spec = registry.get(name)
        assert spec.state_server == name.startswith("esync"), name
        assert spec.kv_type == ("dist_async" if name == "fedasync" else "dist_sync"), name
