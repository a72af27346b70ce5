"""What every gating family's test checks through the CLI: `moelab check --list` lists the component,
`moelab check` accepts a study of its gate preset (from the repo's params.yaml), and a tiny train,
evaluate and benchmark of one task run with it (the benchmark's analytic FLOPs equal torch's count)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from moelab.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = dict(steps=2, batch_size=4, warmup_steps=0, eval_every=2, eval_batches=1, checkpoint_every=2)
TINY_EVAL = {
    "lm": dict(max_batches=1, samples=1, sample_tokens=4),
    "classification": dict(batch_size=8, max_batches=1, samples=1),
    "summarization": dict(batch_size=4, max_batches=1, samples=1, max_new_tokens=4),
}


def listed(capsys, kind: str) -> list[str]:
    """The names `moelab check --list` shows for one registry kind (e.g. "router")."""
    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith(f"{kind}: ")]
    return line.removeprefix(f"{kind}: ").split(", ")


def listed_options(capsys) -> str:
    assert main(["check", "--list"]) == 0
    return capsys.readouterr().out.split("moe options:")[1]


def study_params(tmp: Path, task: str, gate: str, router: str = "linear") -> Path:
    """The repo's params.yaml with a one-cell study (task x router x gate x e8) and tiny runs."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = data["gate_presets"][gate]
    data.update(task=task, tasks=[task], router=router, routers=[router], gates=[gate], models=["e8"], seeds=[0])
    data.update(norm=preset["norm"], top_k=preset["top_k"])
    data[task]["train"].update(TINY_TRAIN)
    data[task]["evaluate"].update(TINY_EVAL[task])
    for section in ("lm", "summarization", "classification"):
        data[section]["pretrain"] = None  # each run from its own initialisation: no base to train first
    data["benchmark"].update(batch_size=2, repeats=10, warmup=1)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_train_evaluate(tmp: Path, data_dir: Path, task: str, gate: str, router: str = "linear") -> tuple[dict, dict]:
    """`moelab check`, train, evaluate and benchmark of one cell; returns (eval.json, benchmark JSON)."""
    params = study_params(tmp, task, gate, router)
    assert main(["check", "--params", str(params)]) == 0
    cell = ["--task", task, "--router", router, "--gate", gate, "--model", "e8", "--seed", "0", "--params", str(params)]
    cell += ["--data-dir", str(data_dir)]
    dirs = ["--models-dir", str(tmp / "model"), "--metrics-dir", str(tmp / "metrics"), "--quiet"]
    assert main(["train", *cell, *dirs]) == 0
    assert main(["evaluate", *cell, *dirs]) == 0
    assert main(["benchmark", *cell, "--out", str(tmp / "bench.json")]) == 0
    evaluation = json.loads((tmp / "metrics" / "eval" / "s0.json").read_text())
    bench = json.loads((tmp / "bench.json").read_text())
    assert evaluation["test_loss"] > 0 and evaluation["flops_per_token"] > 0
    assert abs(bench["flops_analytic_over_counted"] - 1.0) < 1e-9, bench["flops_analytic_over_counted"]
    return evaluation, bench
