"""Multi-process training (torchrun, gloo on CPU) matches one process with the same global batch.

The train stage shards the global batch: every rank draws the same `batch_size * world` windows and
keeps rows rank, rank + world, ... . So `torchrun --nproc_per_node 2` with lm.train.batch_size=4 must
follow the same trajectory as one process with batch_size=8: same per-step train loss, balancing loss,
validation loss and (aux-loss-free balancing) the same selection biases, identical on every rank.

Not bitwise, hence a tolerance: the two runs add the same numbers in different orders (matmuls and
the mean cross-entropy over 4 rows per rank instead of 8, the gradient as the all-reduced mean of two
half-batch gradients, the validation sums all-reduced over two shards), so they differ by float32
rounding (~1e-7 relative per step), which AdamW's normalised updates carry on from step to step.
Observed max relative difference over the 8 steps here: 2e-7 (train loss), 1e-7 (balancing loss),
7e-8 (validation loss); on the full Shakespeare corpus up to 3e-6 (train) and 2e-5 (validation).
TOL = 1e-4 leaves that margin; the bugs this guards against stay above it: a per-rank Switch aux
loss (3e-4 .. 7e-4 from step 1), validation on a world-size-dependent subset (6e-4 .. 3e-3), a
selection-bias update without the all-reduce of the load counts (8e-4 from step 2).

Tiny data is prepared in a temp dir (never the workspace's data/prepared). ~25 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}
WORLD, PER_RANK = 2, 4
STEPS = 8
TOL = 1e-4  # relative, on every logged loss; see the module docstring
BIAS_ATOL = 1e-6  # the biases move in steps of bias_update_rate (0.01): any disagreement is >= 0.01 / E

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

# `python -m moelab`, plus a hook that keeps each rank's model so every rank can dump its selection
# biases after training (only rank 0 writes checkpoints).
PER_RANK_DUMP = textwrap.dedent("""
    import os, runpy, sys
    import torch
    import moelab.train.loop as tr
    kept, wrap = {}, tr.wrap_ddp
    def keep(model, env):
        kept["model"] = model
        return wrap(model, env)
    tr.wrap_ddp = keep
    try:
        runpy.run_module("moelab", run_name="__main__")
    finally:
        if "model" in kept:
            state = {k: v for k, v in kept["model"].state_dict().items() if "selection_bias" in k}
            torch.save(state, os.path.join(os.environ["DUMP_DIR"], f"rank{os.environ['RANK']}.pt"))
""")


def write_params(path: Path, batch_size: int, bias_rate: float) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p.update(
        task="lm",
        router="linear",
        norm="softmax",
        top_k=2,
        model="e8",
        seed=0,
        tasks=["lm"],
        routers=["linear"],
        gates=["softmax-top2"],
        models=["e8"],
        seeds=[0],
    )
    p["lm"]["data"].update(max_records=120, vocab_size=300, seq_len=32)
    p["lm"]["pretrain"] = None  # from its own initialisation: no base
    p["lm"]["train"].update(
        steps=STEPS,
        batch_size=batch_size,
        grad_accum=1,
        eval_every=4,
        eval_batches=2,
        checkpoint_every=4,
        warmup_steps=2,
    )
    if bias_rate:  # aux-loss-free balancing (DeepSeek-V3): selection bias instead of the Switch loss
        p["moe"].update(bias_update_rate=bias_rate, aux_loss_coef=0.0)
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp-data")
    params = write_params(tmp / "params.yaml", PER_RANK, 0.0)
    out = tmp / "prepared"
    r = subprocess.run(
        [sys.executable, "-m", "moelab", "prepare", "--task", "lm", "--out", str(out), "--params", str(params)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return out


def train(work: Path, data: Path, world: int, bias_rate: float) -> subprocess.CompletedProcess:
    work.mkdir()
    params = write_params(work / "params.yaml", PER_RANK * WORLD // world, bias_rate)  # same global batch
    stage = [
        "train",
        "--params",
        str(params),
        "--data-dir",
        str(data),
        "--models-dir",
        str(work / "models"),
        "--metrics-dir",
        str(work / "metrics"),
        "--quiet",
    ]
    if world == 1:
        cmd = [sys.executable, "-m", "moelab", *stage]
    else:
        # --standalone: a local rendezvous on a free port, so parallel runs never clash
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
        if bias_rate:
            (work / "dump.py").write_text(PER_RANK_DUMP)
            cmd = [*launcher, str(work / "dump.py"), *stage]
        else:
            cmd = [*launcher, "-m", "moelab", *stage]
    r = subprocess.run(cmd, env={**ENV, "DUMP_DIR": str(work)}, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("bias_rate", [0.0, 0.01], ids=["switch-aux-loss", "aux-loss-free-bias"])
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, data, bias_rate):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(single, data, 1, bias_rate)
    out = train(ddp, data, WORLD, bias_rate).stdout
    assert out.count("trained lm/linear-softmax-top2-e8/s0") >= 1, out

    ms, md = (json.loads((w / "metrics" / "train" / "run.json").read_text()) for w in (single, ddp))
    assert (ms["world_size"], md["world_size"]) == (1, WORLD)
    assert ms["steps"] == md["steps"] == STEPS and ms["parameters"] == md["parameters"]
    hs, hd = (torch.load(w / "models" / "run" / "latest.pt", weights_only=True)["history"] for w in (single, ddp))
    assert [r["step"] for r in hs] == [r["step"] for r in hd] == list(range(1, STEPS + 1))
    worst = {}
    for a, b in zip(hs, hd):
        assert a.keys() == b.keys(), (a, b)  # val_loss logged at the same steps
        assert a["lr"] == b["lr"]
        for key in ("train_loss", "balancing_loss", "val_loss"):
            if key in a:
                worst[key] = max(worst.get(key, 0.0), rel(a[key], b[key]))
                assert rel(a[key], b[key]) < TOL, f"step {a['step']} {key}: 1 rank {a[key]!r}, {WORLD} ranks {b[key]!r}"
    assert hs[0]["train_loss"] == hd[0]["train_loss"] or rel(hs[0]["train_loss"], hd[0]["train_loss"]) < 1e-6
    for key in ("final_val_loss", "best_val_loss", "train_loss"):
        assert rel(ms[key], md[key]) < TOL, (key, ms[key], md[key])
    print(
        f"\nmax relative differences ({'bias' if bias_rate else 'aux loss'}): "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    )

    ws, wd = (torch.load(w / "models" / "run" / "latest.pt", weights_only=True)["model"] for w in (single, ddp))
    assert ws.keys() == wd.keys()
    biases = sorted(k for k in ws if k.endswith("selection_bias.bias"))
    assert bool(biases) == bool(bias_rate), "the bias buffers exist exactly when the rule is on"
    for k in biases:
        assert torch.allclose(ws[k], wd[k], rtol=0, atol=BIAS_ATOL), (k, ws[k], wd[k])
    if bias_rate:
        assert all(ws[k].abs().sum() > 0 for k in biases), "selection bias never updated"
        ranks = [torch.load(ddp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
        for k in biases:
            assert all(torch.equal(ranks[0][k], other[k]) for other in ranks[1:]), f"{k} differs between ranks"
            assert torch.equal(ranks[0][k], wd[k])  # what rank 0 checkpointed
        loads = [k for k in ranks[0] if k.endswith("selection_bias.load")]
        assert loads and all(not r[k].any() for r in ranks for k in loads)  # counts reset by every update
