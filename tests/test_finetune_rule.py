"""scripts/finetune_rule.py: the fine-tune rule of scale/params.yaml on hand-made curves, and params.yaml's
fine-tune steps against the committed curves."""

import json

import pytest
import yaml

from moelab.scale_report import runs_frame
from scriptload import load_script

rule = load_script("finetune_rule")
BUDGETS = [25, 50, 100, 200, 400]


def _runs(curves: dict[str, list[float]]) -> list[dict]:
    """Fine-tune runs as `moelab scale finetune` names them, one validation loss per budget."""
    return [
        {"name": f"finetune-{variant}-{steps}", "steps": steps, "val_loss": loss}
        for variant, losses in curves.items()
        for steps, loss in zip(BUDGETS, losses, strict=True)
    ]


def _losses(tmp_path, curves: dict[str, list[float]]) -> dict[str, dict[int, float]]:
    """The curves written as a task's fine-tune file and read back as the script reads them."""
    (tmp_path / "t-finetune.json").write_text(json.dumps({"task": "t", "runs": _runs(curves)}))
    return rule.losses_by_variant(runs_frame(tmp_path), "t")


def test_the_rule_takes_the_first_budget_from_100_whose_doubling_gains_under_002_nats_for_every_variant(tmp_path):
    # 100 -> 200: a gains 0.03 (too much); 200 -> 400: a gains 0.019, b 0.0 -> 200
    losses = _losses(tmp_path, {"a": [3.0, 2.9, 2.10, 2.07, 2.051], "b-top2": [3.0, 2.9, 2.0, 2.0, 2.0]})
    assert set(losses) == {"a", "b-top2"} and losses["b-top2"][400] == 2.0
    chosen, tried = rule.pick(losses, BUDGETS)
    assert chosen == 200 and list(tried) == [100, 200]
    assert abs(tried[100]["a"] - 0.03) < 1e-12 and abs(tried[200]["a"] - 0.019) < 1e-12
    # 25 -> 50 gains 0.1 but lies below the floor, so it is never looked at
    assert rule.pick(_losses(tmp_path, {"a": [3.0, 2.9, 2.9, 2.9, 2.9]}), BUDGETS)[0] == 100


def test_no_budget_stops_improving_gives_the_largest(tmp_path):
    losses = _losses(tmp_path, {"a": [3.0, 2.9, 2.5, 2.4, 2.3]})
    assert rule.pick(losses, BUDGETS) == (400, {100: {"a": 0.10000000000000009}, 200: {"a": 0.10000000000000009}})


def test_params_yaml_follows_the_rule_on_the_committed_curves(capsys):
    assert rule.main([]) == 0
    out = capsys.readouterr().out
    assert "classification: the rule picks 100 steps" in out and "lm: the rule picks 400 steps" in out


def test_steps_that_do_not_follow_the_rule_exit_1(tmp_path, repo_params, capsys):
    repo_params["classification"]["train"]["steps"] = 200
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(repo_params))
    assert rule.main(["--params", str(params)]) == 1
    assert "does not follow the rule for: classification" in capsys.readouterr().out


def test_a_missing_curve_says_how_to_make_it(tmp_path, capsys):
    (tmp_path / "lm-finetune.json").write_text(json.dumps({"runs": _runs({"a": [3.0, 2.9, 2.5, 2.4, 2.3]})}))
    with pytest.raises(SystemExit) as stop:
        rule.main(["--metrics-dir", str(tmp_path)])
    assert stop.value.code == 2
    assert "summarization-finetune.json: no fine-tune curve; run `dvc repro scale/dvc.yaml`" in capsys.readouterr().err
