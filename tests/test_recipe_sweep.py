"""scripts/classification_recipe_sweep.py: each recipe is the one change it names, and a short sweep runs
end to end on the bundled corpus (validation scores only)."""

import dataclasses
import json

import pytest
import yaml

from moelab.resolve import parse_params, resolve_base
from scriptload import load_script

sweep = load_script("classification_recipe_sweep")


def _base(raw: dict):
    return resolve_base(parse_params(raw), sweep.TASK, sweep.SIZE)


def _differences(a, b, prefix="") -> set[str]:
    """Dotted names of the fields where two run configs (nested dataclasses) differ."""
    if dataclasses.is_dataclass(a):
        return set().union(
            *(_differences(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.") for f in dataclasses.fields(a))
        )
    return set() if a == b else {prefix.rstrip(".")}


def test_with_changes_sets_dotted_keys_on_a_copy():
    raw = {"a": {"b": {"c": 1}}, "d": 2}
    out = sweep.with_changes(raw, {"a.b.c": 3, "a.b.new": 4})
    assert out == {"a": {"b": {"c": 3, "new": 4}}, "d": 2} and raw == {"a": {"b": {"c": 1}}, "d": 2}
    with pytest.raises(KeyError):
        sweep.with_changes(raw, {"a.x.c": 1})


def test_every_recipe_changes_the_base_run_exactly_where_it_says(repo_params):
    """A recipe whose key were misplaced would train the baseline again under another name."""
    baseline = _base(repo_params)
    expected = {
        "baseline": set(),
        "baseline-seed1": {"seed"},
        "dropout-0.1": {"model.dropout"},
        "dropout-0.2": {"model.dropout"},
        "weight-decay-0.5": {"train.weight_decay"},
        "lr-0.001-2000-steps": {"train.lr", "train.steps"},
        "lr-0.004": {"train.lr"},
        "batch-64": {"train.batch_size"},
        "one-layer": {"model.n_layers"},
        **{f"vocab-{size}": {"data.vocab_size"} for size in (2048, 4096, 16384)},
        **{f"vocab-{size}-seed1": {"data.vocab_size", "seed"} for size in (2048, 4096, 16384)},
    }
    assert set(sweep.RECIPES) == set(expected)
    for name, changes in sweep.RECIPES.items():
        assert _differences(baseline, _base(sweep.with_changes(repo_params, changes))) == expected[name], name


def test_short_run_keeps_a_valid_schedule(repo_params):
    train = _base(sweep.short_run(repo_params, 4)).train
    assert (train.steps, train.eval_every, train.checkpoint_every) == (4, 2, 2) and train.warmup_steps <= 2


def test_a_short_sweep_trains_and_scores_each_recipe(prepared, tmp_path, repo_params, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(repo_params, sort_keys=False))
    out = tmp_path / "rows.json"
    argv = ["--params", str(params), "--data-dir", str(prepared("classification")), "--steps", "4", "--json", str(out)]
    assert sweep.main([*argv, "--only", "baseline", "dropout-0.2"]) == 0
    rows = json.loads(out.read_text())
    assert list(rows) == ["baseline", "dropout-0.2"]
    for row in rows.values():
        assert 0 <= row["best_val_accuracy"] <= 1 and 0 <= row["last_val_accuracy"] <= 1 and row["best_val_loss"] > 0
    assert "dropout-0.2" in capsys.readouterr().out


def test_a_recipe_moelab_refuses_stops_the_sweep_naming_it(prepared, tmp_path, repo_params, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(repo_params, sort_keys=False))
    monkeypatch.setitem(sweep.RECIPES, "dropout-2", {f"{sweep.TASK}.models.{sweep.SIZE}.dropout": 2.0})
    argv = ["--params", str(params), "--data-dir", str(prepared("classification")), "--steps", "4"]
    with pytest.raises(SystemExit, match="dropout-2: `moelab pretrain .*` failed:(.|\\n)*dropout"):
        sweep.main([*argv, "--only", "dropout-2"])


def test_a_vocabulary_recipe_trains_on_data_of_its_own_prepared_once(tmp_path, repo_params, monkeypatch):
    """A recipe that changes classification.data prepares that data (once for a vocabulary and its second
    seed), trains on it and scores bag-of-words on it; a recipe that does not keeps the given data and the
    committed bar. Small corpus (300 texts) so that it runs in seconds."""
    from moelab.cli import main as moelab_main

    small = sweep.with_changes(repo_params, {f"{sweep.TASK}.data.max_records": 300, sweep.VOCAB: 256})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(small, sort_keys=False))
    data_dir = tmp_path / "data"
    assert moelab_main(["prepare", "--task", sweep.TASK, "--params", str(params), "--out", str(data_dir)]) == 0
    monkeypatch.setitem(sweep.RECIPES, "vocab-300", {sweep.VOCAB: 300})
    monkeypatch.setitem(sweep.RECIPES, "vocab-300-seed1", {sweep.VOCAB: 300, "base.seed": 1})
    prepared_vocabularies = []
    own_data = sweep.own_data

    def recording(workdir, params_file):
        own_data(workdir, params_file)
        prepared_vocabularies.append(
            json.loads((workdir / "data" / "manifest.json").read_text())["stats"]["vocab_size"]
        )

    monkeypatch.setattr(sweep, "own_data", recording)
    out = tmp_path / "rows.json"
    argv = ["--params", str(params), "--data-dir", str(data_dir), "--steps", "4", "--json", str(out)]
    assert sweep.main([*argv, "--only", "baseline", "vocab-300", "vocab-300-seed1"]) == 0
    rows = json.loads(out.read_text())
    assert prepared_vocabularies == [300]
    committed = json.loads((sweep.ROOT / "metrics/study/classification/references.json").read_text())
    assert rows["baseline"]["bow_val_accuracy"] == committed["bow-logreg"]["val_accuracy"]
    assert rows["vocab-300"]["bow_val_accuracy"] == rows["vocab-300-seed1"]["bow_val_accuracy"]
    assert 0 <= rows["vocab-300"]["bow_val_accuracy"] <= 1 and rows["vocab-300"]["best_val_loss"] > 0
