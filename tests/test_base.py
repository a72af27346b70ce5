"""The shared base and the fine-tune from it (SparTMoE's protocol): a variant starts from its base's
weights except the routing, which is initialised afresh (seed-dependent); everything else is copied
exactly; a base of another size is refused in one line; a run's fingerprint holds the base's digest,
so a new base starts a fresh run. And runs side by side: one thread each, the same numbers as alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from moelab.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, prepared, monkeypatch) -> Path:
    """A project directory (cwd) with tiny LM params, the prepared corpus and trained bases."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section in ("pretrain", "train"):
        params["lm"][section].update(
            steps=4, batch_size=4, eval_every=2, eval_batches=1, checkpoint_every=2, warmup_steps=1
        )
    params["lm"]["evaluate"].update(max_batches=1, samples=0)
    params.update(routers=["linear", "attention"], gates=["softmax-top2"], models=["e8", "e16"], seeds=[0, 1])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "lm").symlink_to(prepared("lm"))
    assert main(["pretrain", "--task", "lm", "--quiet", "--jobs", "1"]) == 0
    return tmp_path


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_a_variant_starts_from_its_base_with_fresh_routing(project):
    from moelab.resolve import load_params
    from moelab.study import Variant, base_paths, runs
    from moelab.tasks import build_task
    from moelab.train.loop import load_base, routing_keys

    params = load_params("params.yaml")
    base = weights(base_paths("lm", "e8").checkpoints / "best.pt")
    fresh_of = {}
    for router in ("linear", "attention"):
        (run,) = runs(params, Variant("lm", router, "softmax-top2", "e8"), [0])
        assert run.init_from == "models/base/lm/e8"
        torch.manual_seed(0)
        model = build_task(run, "data/prepared/lm").build_model()
        fresh = fresh_of[router] = {k: v.clone() for k, v in model.state_dict().items()}
        load_base(model, Path(run.init_from) / "best.pt")
        routing = routing_keys(model)
        assert routing and all(".router." in k for k in routing)
        for key, value in model.state_dict().items():
            expected = fresh[key] if key in routing else base[key]
            assert torch.equal(value, expected), key
    # the base's own (linear) router is not carried over even to the linear variant
    linear_router = [k for k in base if k.endswith("router.proj.weight")]
    assert linear_router and not torch.equal(base[linear_router[0]], fresh_of["linear"][linear_router[0]])


def test_a_base_of_another_size_is_refused_in_one_line(project, capfd):
    from moelab.study import base_paths

    e16 = base_paths("lm", "e16").checkpoints / "best.pt"
    e8 = base_paths("lm", "e8").checkpoints / "best.pt"
    e8.write_bytes(e16.read_bytes())  # the e8 base replaced by the e16 one
    capfd.readouterr()
    assert (
        main(["train", "--task", "lm", "--router", "linear", "--gate", "softmax-top2", "--model", "e8", "--quiet"]) == 2
    )
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another model size" in err and "best.pt" in err, err


def test_a_new_base_starts_the_variant_afresh(project, capfd):
    argv = ["train", "--task", "lm", "--dense", "--seed", "0", "--quiet", "--jobs", "1"]
    assert main(argv) == 0
    first = json.loads(Path("metrics/study/lm/dense/train/s0.meta.json").read_text())["inputs"]["base"]
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["lm"]["pretrain"]["lr"] /= 2  # another base (retraining the same one gives the same bytes)
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["pretrain", "--task", "lm", "--dense", "--quiet"]) == 0
    capfd.readouterr()
    assert main(argv) == 0
    out = capfd.readouterr().out
    second = json.loads(Path("metrics/study/lm/dense/train/s0.meta.json").read_text())["inputs"]["base"]
    assert "started fresh" in out and "inputs.base" in out and first != second, out


def test_seeds_side_by_side_give_the_numbers_of_one_at_a_time(project):
    argv = ["train", "--task", "lm", "--router", "linear", "--gate", "softmax-top2", "--model", "e8", "--quiet"]
    assert main([*argv, "--jobs", "2"]) == 0
    side_by_side = {s: weights(Path(f"models/lm/linear-softmax-top2-e8/s{s}/best.pt")) for s in (0, 1)}
    assert main([*argv, "--jobs", "1", "--restart"]) == 0
    for seed, parallel in side_by_side.items():
        alone = weights(Path(f"models/lm/linear-softmax-top2-e8/s{seed}/best.pt"))
        assert all(torch.equal(parallel[k], alone[k]) for k in alone), seed
    assert not all(torch.equal(side_by_side[0][k], side_by_side[1][k]) for k in side_by_side[0])
