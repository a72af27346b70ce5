"""The claims study: the interval rules against hand computations (every outcome of every rule), the
claims params (every claim resolves as its paper's setting, cites its source, fairness is enforced),
the claims pipeline's stages, the --quick profile end to end through the CLI (run, pilot, report,
plan), and the claims pipeline through DVC beside the default one (slow). The verdict names, the
regime, Holm and the absent-effect rule: test_claims_verdicts.py; power: test_claims_power.py."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from moelab.claims import verdicts
from moelab.claims.verdicts import EQUIVALENT, INCONCLUSIVE, OUT_OF_REGIME, REFUTED, REPRODUCED, VERDICT_CODES
from moelab.config import ConfigError

T975 = {2: 4.302653, 4: 2.776445}  # Student t quantiles from printed tables (two-sided 95%)
T95 = {2: 2.919986, 4: 2.131847}  # (two-sided 90%: the one-sided 95% of TOST and non-inferiority)


# ------------------------------------------------------------------ difference
def test_difference_reproduced_and_refuted_by_hand():
    a, b = [10.0, 20.0, 30.0], [11.0, 21.1, 30.9]  # a - b = -1.0, -1.1, -0.9: mean -1, s = 0.1
    half = T975[2] * 0.1 / math.sqrt(3)
    result = verdicts.difference(a, b, "lower")
    assert result.estimate == pytest.approx(-1.0)
    assert (result.low, result.high) == (pytest.approx(-1 - half, rel=1e-6), pytest.approx(-1 + half, rel=1e-6))
    assert result.verdict == REPRODUCED and result.n == 3
    assert verdicts.difference(a, b, "higher").verdict == REFUTED


def test_difference_inconclusive_by_hand():
    a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]  # mean 2, s = 1: 2 +- 2.484 straddles 0
    result = verdicts.difference(a, b, "higher")
    assert result.low == pytest.approx(2 - T975[2] / math.sqrt(3), rel=1e-6) and result.low < 0
    assert result.verdict == INCONCLUSIVE
    assert verdicts.difference([1.0], [0.0], "higher").verdict == INCONCLUSIVE  # one seed: no interval


# ------------------------------------------------------------------ equivalence (TOST)
def test_equivalence_equivalent_by_hand():
    diffs = [0.01, -0.01, 0.0, 0.005, -0.005]  # mean 0, s = sqrt(2.5e-4 / 4)
    half90 = T95[4] * math.sqrt(2.5e-4 / 4) / math.sqrt(5)  # 0.00754 < 0.02
    result = verdicts.equivalence(diffs, [0.0] * 5, margin=0.02)
    assert (result.test_low, result.test_high) == (pytest.approx(-half90, rel=1e-5), pytest.approx(half90, rel=1e-5))
    assert result.test_level == pytest.approx(0.90) and result.verdict == EQUIVALENT
    assert verdicts.equivalence(diffs, [0.0] * 5, margin=0.007).verdict == INCONCLUSIVE  # 0.00754 > 0.007


def test_equivalence_refuted_on_either_side_by_hand():
    diffs = [0.5, 0.6, 0.4]  # 90%: 0.5 +- 2.92 * 0.1 / sqrt(3) = [0.331, 0.669], all above 0.1
    assert 0.5 - T95[2] * 0.1 / math.sqrt(3) > 0.1
    assert verdicts.equivalence(diffs, [0.0] * 3, margin=0.1).verdict == REFUTED
    assert verdicts.equivalence([-d for d in diffs], [0.0] * 3, margin=0.1).verdict == REFUTED


def test_equivalence_inconclusive_by_hand():
    diffs = [0.0, 0.2, -0.2]  # 90%: 0 +- 2.92 * 0.2 / sqrt(3) = +-0.337: crosses both margins
    assert verdicts.equivalence(diffs, [0.0] * 3, margin=0.1).verdict == INCONCLUSIVE


# ------------------------------------------------------------------ non-inferiority
def test_non_inferiority_every_outcome_by_hand():
    zeros = [0.0] * 3
    # mean 0.01, s 0.01: upper 90% end 0.01 + 2.92 * 0.01 / sqrt(3) = 0.0269 < 0.05
    holds = verdicts.non_inferiority([0.01, 0.0, 0.02], zeros, margin=0.05, direction="lower")
    assert holds.test_high == pytest.approx(0.01 + T95[2] * 0.01 / math.sqrt(3), rel=1e-6)
    assert holds.verdict == REPRODUCED
    # mean 0.25, s 0.05: lower 90% end 0.25 - 0.0843 = 0.166 > 0.05: worse by more than the margin
    assert verdicts.non_inferiority([0.2, 0.3, 0.25], zeros, margin=0.05, direction="lower").verdict == REFUTED
    # mean 0.0167, s 0.0764: [-0.112, 0.145] contains 0.05
    assert verdicts.non_inferiority([0.0, 0.1, -0.05], zeros, margin=0.05, direction="lower").verdict == INCONCLUSIVE
    # higher is better: a - b > -margin
    assert verdicts.non_inferiority([-0.01, 0.0, -0.02], zeros, 0.05, "higher").verdict == REPRODUCED
    assert verdicts.non_inferiority([-0.2, -0.3, -0.25], zeros, 0.05, "higher").verdict == REFUTED


# ------------------------------------------------------------------ trend
def test_trend_slopes_per_seed_by_hand():
    x = [1, 2, 4]  # log2: 0, 1, 2; with three equally spaced points the slope is (y3 - y1) / 2
    values = [[3.0, 3.1, 2.9], [2.9, 3.0, 2.85], [2.8, 2.86, 2.78]]  # values[cell][seed]
    slopes = [-0.1, -0.12, -0.06]
    mean = sum(slopes) / 3
    s = math.sqrt(sum((v - mean) ** 2 for v in slopes) / 2)
    result = verdicts.trend(x, values, "lower")
    assert result.per_seed == pytest.approx(slopes)
    assert result.estimate == pytest.approx(mean)
    assert result.high == pytest.approx(mean + T975[2] * s / math.sqrt(3), rel=1e-6) and result.high < 0
    assert result.verdict == REPRODUCED
    assert verdicts.trend(x, values, "higher").verdict == REFUTED
    flat = [[3.0, 3.1, 2.9], [3.1, 3.0, 2.9], [3.1, 3.1, 2.9]]  # slopes 0.05, 0, 0: 0.0167 +- 0.0717
    assert verdicts.trend(x, flat, "lower").verdict == INCONCLUSIVE


# ------------------------------------------------------------------ variance ratio
def test_variance_ratio_every_outcome_by_hand():
    # uncorrelated pairs: K = 1 + 2 t^2 / (n - 2) = 1 + 4.302653^2 and the interval F (K -+ sqrt(K^2 - 1))
    wide, narrow = [10.0, -10.0, 10.0, -10.0], [1.0, 1.0, -1.0, -1.0]
    k = 1 + T975[2] ** 2
    result = verdicts.variance_ratio(wide, narrow, "higher")
    assert result.estimate == pytest.approx(100.0)
    assert result.low == pytest.approx(100 * (k - math.sqrt(k * k - 1)), rel=1e-6) and result.low > 1
    assert result.verdict == REPRODUCED
    assert verdicts.variance_ratio(narrow, wide, "higher").verdict == REFUTED
    assert verdicts.variance_ratio([1.0, -1.0, 1.0, -1.0], narrow, "higher").verdict == INCONCLUSIVE  # ratio 1
    assert verdicts.variance_ratio(wide[:2], narrow[:2], "higher").verdict == INCONCLUSIVE  # n = 2: no interval


# ------------------------------------------------------------------ the claims params
CLAIMS_PARAMS = ROOT / "claims" / "params.yaml"


@pytest.fixture(scope="module")
def claims_raw() -> dict:
    return yaml.safe_load(CLAIMS_PARAMS.read_text())


def plan(name: str, path=CLAIMS_PARAMS, quick: bool = False):
    from moelab.claims.spec import load_claims, plan_claim
    from moelab.config import read_yaml

    return plan_claim(load_claims(path), name, read_yaml(ROOT / "params.yaml"), quick=quick)


def changed(claims_raw: dict, tmp_path, change) -> object:
    """claims params with `change(raw)` applied, written under tmp_path; returns the path."""
    raw = copy.deepcopy(claims_raw)
    change(raw)
    path = tmp_path / f"params-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_every_claim_resolves_paired_at_equal_tokens(claims_raw):
    from moelab.claims.spec import ffn_flops_per_token, tokens_per_run
    from moelab.moe.routers import ROUTERS

    budget = claims_raw["budget"]["train"]
    for name, claim in claims_raw["claims"].items():
        p = plan(name)
        assert p.seeds == claim["seeds"] and len(p.seeds) >= 3
        assert p.seeds[: len(claims_raw["pilot"]["seeds"])] == claims_raw["pilot"]["seeds"]  # the pilot's runs reused
        for cell in p.ran().values():
            assert sorted(cell.runs) == sorted(p.seeds)
            run = cell.runs[p.seeds[0]]
            assert tokens_per_run(run) == budget["steps"] * budget["batch_size"] * 64  # the one budget block
            assert run.evaluate.max_batches is None and run.train.eval_every == run.train.steps
            assert run.model.d_model == claims_raw["budget"]["model"]["d_model"]
            assert run.init_from is None  # trained from its own initialisation, never from a study base
        if claim.get("flop_matched"):
            assert len({ffn_flops_per_token(c.runs[p.seeds[0]]) for c in p.ran().values()}) <= 1  # 0: all pending
    cosine = plan("router-equivalence").cells["cosine"]
    assert bool(cosine.runs) == ("cosine" in ROUTERS.classes)  # not run exactly while the router is missing


def test_faithful_settings_resolve_as_cited():
    """Each claim's cells are the setting its params cite (claims/params.yaml, the papers' tables)."""
    lfb = plan("loss-free-balancing")
    for cell in ("bias", "aux"):  # Wang et al. 2024: DeepSeekMoE 64 routed / 6 active / 2 shared, sigmoid gate
        moe = lfb.cells[cell].runs[0].model.moe
        assert (moe.n_routed, moe.k_routed, moe.n_shared, moe.norm) == (64, 6, 2, "sigmoid")
    bias, aux = (lfb.cells[c].runs[0].model.moe.options for c in ("bias", "aux"))
    assert (bias["bias_update_rate"], bias["aux_loss_coef"]) == (0.001, 0.0)  # u = 0.001, sign updates, no aux loss
    assert (aux["bias_update_rate"], aux["aux_loss_coef"]) == (0.0, 0.001)  # their baseline's alpha
    assert lfb.spec.parts["lower-maxvio"].metric == "max_violation_global"
    cf = plan("capacity-factor")
    assert {c: cf.cells[c].runs[0].model.moe.options["capacity_factor"] for c in cf.cells} == {
        "cf1.0": 1.0,
        "cf1.25": 1.25,
        "cf2.0": 2.0,
    }
    parts = cf.spec.parts
    assert {(p.a, p.b) for p in parts.values() if p.kind == "non_inferiority"} == {
        ("cf1.0", "cf2.0"),
        ("cf1.25", "cf2.0"),
    }
    assert parts["step-time"].role == "measurement" and parts["step-time"].metric == "train_step_s"
    routers = plan("router-equivalence")
    assert routers.spec.origin == "lab"  # this lab's hypothesis: no published source claims it
    assert all(c.runs[0].model.moe.options["renormalize"] for c in routers.ran().values())  # equal gate mass
    init = plan("init-scale")
    assert init.cells["scale0.1"].runs[0].model.moe.n_experts == 32  # Switch Table 3: a 32-expert model
    z = plan("z-loss")
    assert z.cells["z"].runs[0].model.moe.options["z_loss_coef"] == 0.001  # ST-MoE's c_z
    fine = plan("fine-grained-shared")
    shapes = {
        c: (m.n_routed, m.k_routed, m.n_shared) for c, m in ((c, fine.cells[c].runs[0].model.moe) for c in fine.cells)
    }
    assert shapes == {"coarse": (8, 1, 0), "fine": (32, 4, 0), "shared": (32, 3, 1)}  # OLMoE's 8/1 -> 32/4, 1 + 3


def test_every_claim_cites_its_source(claims_raw):
    """A published claim names its paper with an arXiv id and the section / table / figure each setting
    comes from; a lab hypothesis says so; manipulation checks are marked; every claim has a claim part."""
    import re

    for name, claim in claims_raw["claims"].items():
        source = claim["source"]
        assert re.search(r"arXiv \d{4}\.\d{4,5}", source), name
        if claim.get("origin", "published") == "published":
            assert re.search(r"(sec\.|Table|Fig\.)", source), name
        else:
            assert "no published source" in source, name
        roles = {p.get("role", "claim") for p in claim["parts"].values()}
        assert "claim" in roles, name
    manipulations = {
        (name, part)
        for name, claim in claims_raw["claims"].items()
        for part, spec in claim["parts"].items()
        if spec.get("role") == "manipulation"
    }
    assert manipulations == {
        ("aux-loss", "balance"),
        ("z-loss", "smaller-logits"),
        ("loss-free-balancing", "lower-maxvio"),
        ("capacity-factor", "fewer-drops"),
    }
    source = claims_raw["claims"]["loss-free-balancing"]["source"]
    for setting in ("2408.15664", "Table 2", "sigmoid", "u = 0.001", "alpha = 0.001", "MaxVio_global", "Table 5"):
        assert setting in source
    assert "Table 1" in claims_raw["claims"]["capacity-factor"]["source"]
    assert "Table 3" in claims_raw["claims"]["init-scale"]["source"]
    assert claims_raw["budget"]["status"] in ("placeholder", "set") and "scale/" in claims_raw["budget"]["source"]


def test_ffn_flops_by_hand():
    from moelab.claims.spec import ffn_flops_per_token

    p = plan("moe-vs-dense")
    per_layer = 2 * 2 * 64 * 128  # two matmuls (in, out) of 64 x 128, a multiply-add = 2 FLOPs
    for cell in ("moe", "dense"):  # top-1 of 8 experts of width 128 / one dense FFN of width 128
        assert ffn_flops_per_token(p.cells[cell].runs[0]) == 2 * per_layer
    assert p.cells["dense"].runs[0].model.moe is None and p.cells["dense"].runs[0].model.dense_d_ff == 128


def test_unfair_claims_are_refused(claims_raw, tmp_path):
    from moelab.claims.spec import check_fairness, load_claims, plan_claim
    from moelab.config import read_yaml

    def cells(raw, claim):
        return raw["claims"][claim]["cells"]

    per_cell_steps = changed(
        claims_raw, tmp_path, lambda raw: cells(raw, "moe-vs-dense")["dense"].update(train={"steps": 9})
    )
    with pytest.raises(ConfigError, match="unknown key 'claims.moe-vs-dense.cells.dense.train'"):
        plan("moe-vs-dense", per_cell_steps)  # the recipe is the budget's, never a cell's
    fewer = plan_claim(load_claims(CLAIMS_PARAMS), "moe-vs-dense", read_yaml(ROOT / "params.yaml"), steps=9)
    mixed = plan("moe-vs-dense")
    mixed.cells["dense"].runs = fewer.cells["dense"].runs
    with pytest.raises(ConfigError, match="different training tokens"):
        check_fairness(mixed)
    top2 = changed(claims_raw, tmp_path, lambda raw: cells(raw, "moe-vs-dense")["moe"].update(top_k=2))
    with pytest.raises(ConfigError, match="FFN FLOPs per token differ"):  # twice the dense model's
        plan("moe-vs-dense", top2)
    typo = changed(
        claims_raw, tmp_path, lambda raw: cells(raw, "router-equivalence")["attention"].update(router="atention")
    )
    with pytest.raises(ConfigError, match="router 'atention'"):  # a typo is not a pending component
        plan("router-equivalence", typo)
    same = changed(claims_raw, tmp_path, lambda raw: cells(raw, "aux-loss")["none"]["moe"].update(aux_loss_coef=0.01))
    with pytest.raises(ConfigError, match="cells aux and none are the same run"):
        plan("aux-loss", same)
    two_seeds = changed(claims_raw, tmp_path, lambda raw: raw["claims"]["aux-loss"].update(seeds=[0, 1]))
    with pytest.raises(ConfigError, match="distinct seeds"):
        plan("aux-loss", two_seeds)
    other_data = changed(claims_raw, tmp_path, lambda raw: raw["budget"]["data"].update(vocab_size=4096))
    with pytest.raises(ConfigError, match="budget.data.vocab_size"):
        plan("aux-loss", other_data)  # the prepared data and the references are the root study's
    only_checks = changed(claims_raw, tmp_path, lambda raw: raw["claims"]["aux-loss"]["parts"].pop("cost"))
    with pytest.raises(ConfigError, match="no part with role claim"):
        plan("aux-loss", only_checks)
    bad_level = changed(claims_raw, tmp_path, lambda raw: raw.update(level=0.9))
    with pytest.raises(ConfigError, match="level = 1 - alpha"):
        plan("aux-loss", bad_level)


def test_max_violation_is_wang_et_al_definition():
    """MaxVio = max_i load_i / mean load - 1 (Wang et al. 2024, eq. 4), per batch (routing stats) and over
    the whole split (claims), both averaged over MoE layers."""
    import torch

    from moelab.claims.study import max_violation_global
    from moelab.moe.stats import max_violation

    assert max_violation(torch.tensor([3, 1, 0, 0])) == pytest.approx(3 / 1 - 1)
    layers = [{"tokens_per_expert": [3, 1, 0, 0]}, {"tokens_per_expert": [1, 1, 1, 1]}]
    assert max_violation_global(layers) == pytest.approx((2.0 + 0.0) / 2)
    assert max_violation_global([]) is None


def test_claims_dvc_stages():
    """The report is the only stage that reads the rules and margins (editing them re-runs no training);
    it depends on the references (the bar) and the pilots; claims.json is the one metrics file."""
    stages = yaml.safe_load((ROOT / "claims" / "dvc.yaml").read_text())["stages"]
    for name in ("pilot", "run"):
        params = stages[name]["do"]["params"]
        assert "claims.${key}.cells" in params and not any("parts" in str(p) for p in params)
        assert "claims.${key}" not in params and "budget" in params
    assert "claims.${key}.seeds" not in stages["pilot"]["do"]["params"]  # the pilot's seeds are its own
    report = stages["report"]
    assert "../metrics/study/lm/references.json" in report["deps"] and "pilot" in report["deps"]
    assert [next(iter(m)) for m in report["metrics"]] == ["../metrics/claims.json"]
    assert {next(iter(o)) for o in report["outs"]} == {"../metrics/claims.details.json", "../metrics/claims.md"}


def test_claims_stages_depend_on_the_code_they_import():
    """Every moelab module the claims commands import is covered by a stage dependency: the run and pilot
    stages' code fingerprints (train, evaluate) and claims modules, the report's check fingerprint, stats and
    claims/."""
    import subprocess
    import sys

    from moelab.provenance import PACKAGE, code_files
    from moelab.stages import STAGE_CODE

    def imported(modules: list[str]) -> set[str]:
        code = "import sys; " + "; ".join(f"import {m}" for m in modules)
        code += (
            "; print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('moelab') and m.__file__))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        return {str(path.relative_to(PACKAGE)) for path in map(Path, out.split())}

    stages = yaml.safe_load((ROOT / "claims" / "dvc.yaml").read_text())["stages"]

    def covered(deps: list[str]) -> set[str]:
        files: set[str] = set()
        for dep in deps:
            if dep.startswith("../fingerprints/code/"):
                files |= {str(f.relative_to(PACKAGE)) for f in code_files(STAGE_CODE[Path(dep).stem])}
            elif dep.startswith("../src/moelab/"):
                rel = dep.removeprefix("../src/moelab/")
                files |= {str(f.relative_to(PACKAGE)) for f in code_files((rel,))}
        return files

    runner = [
        "moelab.cli",
        "moelab.claims.cli",
        "moelab.claims.spec",
        "moelab.claims.study",
        "moelab.parallel",
        "moelab.evaluate",
        "moelab.study",
        "moelab.train.loop",
    ]
    assert imported(runner) <= covered(stages["run"]["do"]["deps"])
    assert covered(stages["run"]["do"]["deps"]) == covered(stages["pilot"]["do"]["deps"])
    reporter = ["moelab.cli", "moelab.claims.cli", "moelab.claims.report", "moelab.claims.plots"]
    assert imported(reporter) <= covered(stages["report"]["deps"])


# ------------------------------------------------------------------ end to end
# one config: the top-1 base of 8 experts, shared by four claims
SHARED_CELL = [("moe-vs-dense", "moe"), ("aux-loss", "aux"), ("fine-grained-shared", "coarse"), ("expert-count", "e8")]


def numbers_only(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and numbers_only(v) for k, v in value.items())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_profile_end_to_end(tmp_path, prepared):
    """`moelab claims run --all --quick`, a quick pilot, `report` and `plan`: every claim judged (the 2-step
    models are out of regime by the bar), the table, claims.json with numbers only, the details with the
    params echoed, a figure per claim that ran, the power rows from the pilot."""
    from moelab.cli import main

    runs, plots, pilot = tmp_path / "runs", tmp_path / "plots", tmp_path / "pilot"
    common = ["--models-dir", str(tmp_path / "models"), "--data-dir", str(prepared("lm")), "--jobs", "1"]
    assert main(["claims", "run", "--all", "--quick", "--runs-dir", str(runs), *common]) == 0
    assert (
        main(["claims", "pilot", "--claim", "z-loss", "--quick", "--seeds", "2", "--pilot-dir", str(pilot), *common])
        == 0
    )
    refs = tmp_path / "references.json"
    refs.write_text(json.dumps({"kn-bigram": {"role": "bar", "test_loss": 4.16, "test_ppl": 64.1}}))
    out_json, out_md, details = tmp_path / "claims.json", tmp_path / "claims.md", tmp_path / "claims.details.json"
    report_args = [
        "--runs-dir",
        str(runs),
        "--json",
        str(out_json),
        "--md",
        str(out_md),
        "--plots",
        str(plots),
        "--references",
        str(refs),
        "--pilot-dir",
        str(pilot),
        "--details",
        str(details),
    ]
    assert main(["claims", "report", *report_args]) == 0
    metrics, report = json.loads(out_json.read_text()), json.loads(details.read_text())
    claims = yaml.safe_load((ROOT / "claims" / "params.yaml").read_text())["claims"]
    assert numbers_only(metrics) and list(metrics) == list(claims)  # what `dvc metrics show` reads
    assert report["profile"] == "quick" and list(report["claims"]) == list(claims)
    assert report["bar"]["test_loss"] == 4.16
    for name, claim in report["claims"].items():
        assert claim["verdict"] == OUT_OF_REGIME  # 2 steps: nowhere near the bigram
        assert metrics[name]["verdict"] == VERDICT_CODES[OUT_OF_REGIME]
        assert claim["params"]["parts"].keys() == claims[name]["parts"].keys()
        for part_name, part in claim["parts"].items():
            assert part["n"] == 2 and len(next(iter(part["values"].values()))) == 2
            if part["metric"] in ("test_loss", "val_loss"):
                assert part["verdict"] == OUT_OF_REGIME and metrics[name][part_name]["verdict"] == -3
            if part["role"] == "manipulation":
                assert part["verdict"].startswith("manipulation check: ") and part_name not in metrics[name]
        assert (plots / f"claims_{name}.png").exists()
    z_power = report["claims"]["z-loss"]["power"]["cost"]
    assert (
        z_power["pilot_n"] == 2
        and z_power["pilot_sd"] is not None
        and z_power["n_used"] == len(claims["z-loss"]["seeds"])
    )
    assert report["claims"]["moe-vs-dense"]["power"]["beats-dense"]["pilot_sd"] is None  # no pilot for it
    moe = report["claims"]["moe-vs-dense"]["cells"]["moe"]
    assert moe["settings"]["train"]["steps"] == 2 and moe["settings"]["top_k"] == 1  # what the claim asked for
    resolved = json.loads((runs / "moe-vs-dense.json").read_text())["cells"]["moe"]["resolved"]  # what ran
    assert resolved["train"]["steps"] == 2 and resolved["model"]["moe"]["top_k"] == 1
    shared = [json.loads((runs / f"{c}.json").read_text())["cells"][cell]["seeds"]["0"] for c, cell in SHARED_CELL]
    assert len({r["run_dir"] for r in shared}) == 1 and len({r["test_loss"] for r in shared}) == 1  # trained once
    assert all(r["train_step_s"] > 0 for r in shared)
    table = out_md.read_text()
    assert "| claim | setting | effect (mean ± 95% CI, n seeds) → verdict | in regime? | verdict |" in table
    assert "quick profile" in table and "## Power" in table and "## Family-wise error (Holm)" in table
    assert sum(line.startswith("| **") for line in table.splitlines()) == len(claims)  # a row per claim
    # a bar every 2-step model beats: the rules decide, Holm adjusts (the verdicts of 2 seeds mean nothing)
    refs.write_text(json.dumps({"kn-bigram": {"role": "bar", "test_loss": 99.0}}))
    assert main(["claims", "report", *report_args]) == 0
    report = json.loads(details.read_text())
    assert OUT_OF_REGIME not in {p["verdict"] for c in report["claims"].values() for p in c["parts"].values()}
    assert report["rules"]["familywise"]["m"] == sum(
        "p_holm" in p for c in report["claims"].values() for p in c["parts"].values()
    )
    assert (
        main(
            ["claims", "plan", "--pilot-dir", str(pilot), "--s-per-step", "0.05", "--json", str(tmp_path / "plan.json")]
        )
        == 0
    )
    assert json.loads((tmp_path / "plan.json").read_text())["claims"]["z-loss"]["power"]["cost"]["pilot_n"] == 2


@pytest.mark.slow
def test_claims_pipeline_runs_beside_the_default_one(tmp_path):
    """`dvc repro claims/dvc.yaml` builds prepare@lm and references@lm, one claim's pilot and stage, the
    report; the root pipeline neither lists the claims stages nor shares an output with them (DVC refuses
    overlapping outputs)."""
    from labrepo import make_lab
    from test_e2e import sh

    lab = make_lab(tmp_path / "lab", sh)
    shutil.copytree(
        ROOT / "claims", lab / "claims", ignore=shutil.ignore_patterns("models", "metrics", "plots", "pilot")
    )
    raw = yaml.safe_load((lab / "claims" / "params.yaml").read_text())
    lab_params = yaml.safe_load((lab / "params.yaml").read_text())
    raw["claims"] = {"moe-vs-dense": raw["claims"]["moe-vs-dense"]}
    raw["claims"]["moe-vs-dense"]["seeds"] = [0, 1, 2]
    raw["budget"]["data"] = {k: lab_params["lm"]["data"][k] for k in raw["budget"]["data"]}  # the lab's tiny data
    raw["budget"]["train"].update(raw["quick"]["train"])
    raw["defaults"]["evaluate"].update(raw["quick"]["evaluate"])
    (lab / "claims" / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh("git add -A && git commit -qm claims", lab)
    assert "claims/dvc.yaml:report" in sh("dvc dag", lab)  # one repo-wide graph, no overlapping outputs
    # what a plain `dvc repro` runs: the stages of dvc.yaml and their upstream (the report reads the study)
    root_run = "".join(sh(f"dvc dag --dot {stage}", lab) for stage in ("exp", "benchmark", "report"))
    assert "study/dvc.yaml:evaluate@lm-" in root_run and "claims" not in root_run
    out = sh("dvc repro claims/dvc.yaml", lab)
    for stage in ("prepare@lm", "references@lm", "pilot@moe-vs-dense", "run@moe-vs-dense", "claims/dvc.yaml:report"):
        assert stage in out
    metrics = json.loads((lab / "metrics" / "claims.json").read_text())
    report = json.loads((lab / "metrics" / "claims.details.json").read_text())
    assert numbers_only(metrics) and report["profile"] == "full"
    assert report["claims"]["moe-vs-dense"]["parts"]["beats-dense"]["n"] == 3
    assert (lab / "claims" / "plots" / "claims_moe-vs-dense.png").read_bytes()[:4] == b"\x89PNG"
    assert "Running stage" not in sh("dvc repro claims/dvc.yaml", lab)


def test_report_pairs_seeds_and_leaves_diverged_ones_out():
    """judge_part on a hand-made runs file: seed 3 diverged in cell a, so the pair (a, b) of seed 3 is
    left out of the test; the other differences (-1.0, -1.1, -0.9) give the hand-computed interval."""
    from moelab.claims.report import judge_part
    from moelab.claims.spec import PartSpec, load_claims

    a = {"0": {"test_loss": 4.0}, "1": {"test_loss": 3.9}, "2": {"test_loss": 4.2}, "3": {"diverged": "step 9: nan"}}
    b = {"0": {"test_loss": 5.0}, "1": {"test_loss": 5.0}, "2": {"test_loss": 5.1}, "3": {"test_loss": 5.0}}
    runs = {"claim": "c", "seeds": [0, 1, 2, 3], "cells": {"a": {"seeds": a}, "b": {"seeds": b}}}
    part = PartSpec(kind="difference", metric="test_loss", a="a", b="b", direction="lower")
    judged = judge_part(part, runs, load_claims(CLAIMS_PARAMS), bar={"name": "kn-bigram", "test_loss": 9.0})
    assert judged["diverged"] == {"3": ["a"]} and judged["n"] == 3
    assert judged["values"] == {"a": [4.0, 3.9, 4.2], "b": [5.0, 5.0, 5.1]}
    half = T975[2] * 0.1 / math.sqrt(3)
    assert judged["low"] == pytest.approx(-1 - half, rel=1e-6) and judged["verdict"] == REPRODUCED
    assert judged["p"] == pytest.approx(2 * (1 - __import__("scipy").stats.t.cdf(1.0 / (0.1 / math.sqrt(3)), 2)))
