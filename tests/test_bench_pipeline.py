"""scripts/bench_pipeline.py --set: another recipe priced in a throwaway lab, keys checked before the run."""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_pipeline  # noqa: E402


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_set_changes_exactly_the_named_keys_with_yaml_values():
    settings = [
        bench_pipeline.parse_setting("lm.train.steps=100"),
        bench_pipeline.parse_setting("summarization.models.e8.d_model=96"),
        bench_pipeline.parse_setting("seeds=[0, 1]"),
    ]
    expected = params()
    expected["lm"]["train"]["steps"] = 100
    expected["summarization"]["models"]["e8"]["d_model"] = 96
    expected["seeds"] = [0, 1]
    after = bench_pipeline.with_settings(bench_pipeline.SHAPES["default"], settings)(params())
    assert after == expected  # the three keys, with YAML's values, and nothing else moved


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lm.train.stepz=1", "--set lm.train.stepz: params.yaml has no such key"),
        ("lm.trainx.steps=1", "--set lm.trainx.steps: params.yaml has no key lm.trainx"),
        ("lm.train.steps.x=1", "--set lm.train.steps.x: lm.train.steps is a value, not a mapping"),
    ],
)
def test_set_refuses_a_key_params_yaml_does_not_have(setting, message):
    shaped = bench_pipeline.with_settings(bench_pipeline.SHAPES["default"], [bench_pipeline.parse_setting(setting)])
    with pytest.raises(SystemExit, match=message):
        shaped(params())


def test_set_needs_key_and_value():
    with pytest.raises(bench_pipeline.argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        bench_pipeline.parse_setting("lm.train.steps")
