"""Bad values in params.yaml fail at start with one line naming key, value and what is allowed."""

import subprocess
import sys

import pytest

from moelab.config import ConfigError
from moelab.resolve import load_params

CASES = [
    (
        lambda d: d.update(router="atention"),
        ["router", "'atention'", "linear", "attention", "did you mean 'attention'"],
    ),
    (lambda d: d.update(norm="relu"), ["norm", "'relu'", "softmax", "sparsemax", "entmax15"]),
    (lambda d: d.update(top_k=-1), ["top_k", "-1", "integer >= 0", "soft routing"]),
    (lambda d: d.update(top_k=9), ["top_k", "9", "1..8"]),
    (lambda d: d["moe"].update(capacity_factor=-0.5), ["moe.capacity_factor", "-0.5", ">= 0"]),
    (lambda d: d.update(model="e32"), ["model", "'e32'", "e8, e16"]),
    (lambda d: d.update(routr="linear"), ["unknown key 'routr'"]),
    (lambda d: d["moe"].update(aux_los_coef=0.1), ["unknown key 'moe.aux_los_coef'", "did you mean 'aux_loss_coef'"]),
    (lambda d: d.update(top_k="two"), ["top_k", "'two'", "int"]),
    (lambda d: d.update(gates=["softmax-top3"]), ["gates", "'softmax-top3'", "softmax-top2"]),
    (lambda d: d.update(routers=[]), ["routers", "non-empty list"]),
    (
        lambda d: d["moe"].update(bias_update_rate=0.1, capacity_policy="weight") or d.update(top_k=0),
        ["moe.bias_update_rate", "top_k = 0"],
    ),
]


@pytest.mark.parametrize("mutate, expected", CASES)
def test_bad_params_are_named(params_file, mutate, expected):
    path = params_file(mutate)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_cli_prints_one_line_and_exits_2(params_file):
    path = params_file(lambda d: d.update(router="atention"))
    proc = subprocess.run(
        [sys.executable, "-m", "moelab", "check", "--params", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("moelab check: error: params.yaml: router = 'atention' is not allowed")


def test_default_params_are_valid(params_file):
    assert load_params(params_file()).router in ("linear", "attention")
