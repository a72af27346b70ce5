"""End to end in a fresh git repo: `dvc repro`, the benchmark, a shared cache (push, a fresh clone
pulls and re-measures only what depends on the machine), `dvc exp run -S router=attention`,
`dvc exp show` and `dvc metrics diff`."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from labrepo import lab_sh, make_lab

MACHINE = "fingerprints/dvc.yaml:machine"
STUDY = "study/dvc.yaml:"  # the study's stages are addressed by their pipeline file
# the params that name a cell and the headline metrics every experiment shows
CELL_PARAMS = ("task", "router", "norm", "top_k", "model", "seed")
HEADLINE = ("test_ppl", "test_bpc", "flops_per_token", "experts_per_token", "load_cv", "train_s")
pytestmark = pytest.mark.slow  # each test runs dvc in a throwaway lab


sh = lab_sh  # run a command in the lab


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return make_lab(tmp_path_factory.mktemp("lab"), sh)


def test_repro_writes_metrics_for_every_variant(lab):
    out = sh("dvc repro", lab)
    expected = {"prepare@lm", "references@lm", "pretrain@lm", "train@lm-linear-softmax-top2-e8", "train-dense@lm"}
    expected |= {"evaluate@lm-linear-softmax-top2-e8", "evaluate-dense@lm"}
    assert {STUDY + stage for stage in expected} | {"exp", "benchmark", "report"} <= stages_run(out)
    assert "layer/dvc.yaml:bench" not in stages_run(out), "the layer micro-benchmark is a pipeline of its own"
    references = json.loads((lab / "metrics" / "study" / "lm" / "references.json").read_text())
    assert references["unigram"]["test_ppl"] > references["kn-bigram"]["test_ppl"] > 1
    headline = json.loads((lab / "metrics" / "study.json").read_text())
    for variant in ("linear-softmax-top2-e8", "dense"):
        assert headline["lm"][variant]["n"] == 1 and headline["lm"][variant]["test_ppl"] > 1
    assert (lab / "metrics" / "summary.md").read_text().count("| linear-softmax-top2-e8 |") == 1
    figures = json.loads(sh("dvc plots show --json", lab))["data"]
    for name in ("loss_curves", "quality_flops", "expert_load", "experts_per_token"):
        png = lab / "plots" / f"lm_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/lm_{name}.png" in figures
    assert any(k.startswith("metrics/exp/train/live/run/") and k.endswith("/train/loss.tsv") for k in figures)
    again = sh("dvc repro", lab)
    assert stages_run(again) == {MACHINE}, "same machine, code and params: only the fingerprint is re-read"
    sh("git add -A && git commit -qm baseline", lab)


def test_benchmark_stages_measure_every_variant_and_the_layer(lab):
    for variant in ("linear-softmax-top2-e8", "dense"):
        bench = json.loads((lab / "metrics" / "bench" / "lm" / f"{variant}.json").read_text())
        assert bench["flops_analytic_over_counted"] == pytest.approx(1.0, rel=1e-9)
        assert bench["train_step_p90_ms"] >= bench["train_step_ms"] > 0 and bench["repeats"] == 10
        assert bench["device"] == "cpu" and bench["threads"] >= 1
        meta = json.loads((lab / "metrics" / "bench" / "lm" / f"{variant}.meta.json").read_text())
        assert meta["versions"]["torch"]
    assert "| lm | linear-softmax-top2-e8 |" in (lab / "metrics" / "bench.md").read_text()
    assert stages_run(sh("dvc repro layer/dvc.yaml", lab)) == {MACHINE, "layer/dvc.yaml:bench"}
    layer = json.loads((lab / "metrics" / "bench_layer.rows.json").read_text())
    assert {r["impl"] for r in layer["rows"]} == {"dense", "moelab", "naive", "hf-switch"}
    assert "| 64 | 1 | hf-switch |" in (lab / "metrics" / "bench_layer.md").read_text()
    assert stages_run(sh("dvc repro", lab)) == {MACHINE}
    sh("git add -A && git commit -qm layer", lab)


def test_a_fresh_clone_pulls_the_study_and_re_measures_only_the_benchmark(lab, tmp_path):
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    sh(f"dvc remote modify --local shared url '{remote}' && dvc push", lab)  # the documented override
    sh(f"git clone -q '{lab}' '{clone}'", tmp_path)
    sh(f"dvc remote modify --local shared url '{remote}' && dvc pull", clone)
    assert (clone / "models" / "lm" / "linear-softmax-top2-e8" / "s0" / "best.pt").is_file()
    assert (clone / "models" / "base" / "lm" / "e8" / "best.pt").is_file(), "the base is shared through the remote"
    assert stages_run(sh("dvc repro", clone)) == {MACHINE}, "pulled results are up to date: nothing trains"
    threads = str(int(os.environ.get("OMP_NUM_THREADS") or "1") + 1)  # another machine's fingerprint
    assert stages_run(sh("dvc repro", clone, OMP_NUM_THREADS=threads)) == {MACHINE, "benchmark", "report"}


def test_exp_run_changes_only_the_experiment_and_shows_readably(lab):
    out = sh("dvc exp run -S router=attention", lab)
    assert stages_run(out) == {MACHINE, "exp"}, "the study (and the params check) must not re-run"
    header, *rows = sh("dvc exp show --no-pager --csv", lab).strip().splitlines()
    columns = header.split(",")
    assert set(CELL_PARAMS + HEADLINE) <= set(columns) and any(",attention," in r for r in rows)
    assert not [c for c in columns if "_meta" in c or "config" in c]
    shown = json.loads(sh("dvc exp show --no-pager --json", lab))[0]["data"]
    assert set(shown["metrics"]) == {"metrics/exp/headline.json", "metrics/study.json"}, "the two headlines only"
    metrics = [v for f in shown["metrics"].values() for v in flat(f["data"]).values()]
    assert all(isinstance(v, (int, float)) for v in metrics), "metrics are numbers, provenance is elsewhere"
    changed = sh("dvc exp show --no-pager --csv --only-changed", lab).strip().splitlines()[0].split(",")
    assert len(",".join(changed)) < 1200 and len(changed) <= 40, changed  # fits a screen: what the experiment changed
    diff = sh("dvc metrics diff", lab)
    assert "metrics/exp/headline.json" in diff and "test_ppl" in diff
    assert "_meta" not in diff and "config" not in diff
    assert yaml.safe_load((lab / "params.yaml").read_text())["router"] == "attention"


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out
