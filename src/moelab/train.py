"""The train stage: AdamW, warmup + cosine, clipping, accumulation, resumable checkpoints, DVCLive."""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import config_fingerprint, load_checkpoint, load_model_state, save_checkpoint
from .config import RunConfig
from .io import write_metrics
from .tasks import build_task


class NonFiniteLoss(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to min_ratio at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (incl. stacked expert weights); not biases, norms or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and "emb" not in name
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class DistEnv:
    """torchrun environment (RANK, WORLD_SIZE); a single process when absent."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def shard(batch: dict, env: DistEnv) -> dict:
    """Every rank draws the same global batch and keeps rows rank, rank + world, ..."""
    return {k: v[env.rank::env.world] for k, v in batch.items()} if env.world > 1 else batch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def check_finite(step: int, terms: dict[str, torch.Tensor], ckpt: Path) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLoss(f"step {step}: {name} is {value.item()} (non-finite); training stopped, "
                                f"last good checkpoint {ckpt} left intact")


@torch.no_grad()
def validation_loss(task, model, batch_size: int, max_batches: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in task.eval_batches("validation", batch_size, max_batches):
        loss, info = task_loss(task, model, to_device(batch, device))
        total += loss.item() * info["tokens"]
        count += info["tokens"]
    model.train()
    return total / max(count, 1)


def task_loss(task, model, batch):
    """(loss, info) of the task; with DDP the forward runs through the wrapper so gradients sync."""
    core = getattr(model, "module", model)
    return core.loss(batch, forward=model)


def train(run: RunConfig, data_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
          live_dir: str | Path | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train one run; resumes from out_dir/latest.pt when it exists. Returns the train metrics."""
    env = DistEnv()
    try:
        return _train(run, Path(data_dir), Path(out_dir), Path(metrics_path),
                      Path(live_dir) if live_dir else None, env, progress, stop_after)
    finally:
        env.close()


def _train(run, data_dir, out_dir, metrics_path, live_dir, env, progress, stop_after) -> dict:
    tp = run.train
    seed_everything(run.seed)
    task = build_task(run, data_dir)
    model = task.build_model().to(env.device)
    optimizer = torch.optim.AdamW(param_groups(model, tp.weight_decay), lr=tp.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tp.warmup_steps, tp.steps, tp.min_lr_ratio))
    data_gen = torch.Generator().manual_seed(run.seed)
    config = run.to_dict()
    latest, best = out_dir / "latest.pt", out_dir / "best.pt"
    step, best_val, history = 0, float("inf"), []
    if latest.exists():
        state = load_checkpoint(latest)
        load_model_state(model, state, latest, config)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        data_gen.set_state(state["rng"]["data"])
        random.setstate(_py_rng(state["rng"]["python"]))
        step, best_val, history = state["step"], state["best_val"], state.get("history", [])
    resumed_from = step
    ddp = _wrap_ddp(model, env)
    live = _open_live(live_dir, resumed=resumed_from > 0) if env.main and live_dir else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if env.device.type == "cuda" else nullcontext())

    def snapshot() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "best_val": best_val, "history": history, "config": config_fingerprint(config),
                "rng": {"torch": torch.get_rng_state(), "data": data_gen.get_state(),
                        "python": _py_rng_state(random.getstate())}}

    model.train()
    start, tokens_seen = time.perf_counter(), 0
    bar = tqdm(total=tp.steps, initial=step, desc=f"train {run.task}/{run.name}/s{run.seed}",
               disable=not (progress and env.main), mininterval=1.0, dynamic_ncols=True)
    while step < tp.steps:
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_bal = 0.0, 0.0
        for _ in range(tp.grad_accum):
            batch = to_device(shard(task.train_batch(data_gen, tp.batch_size * env.world), env), env.device)
            with autocast:
                loss, info = task_loss(task, ddp, batch)
                balancing = model.balancing_loss().to(loss.device)
            check_finite(step, {"task loss": loss, "balancing loss": balancing}, latest)
            ((loss + balancing) / tp.grad_accum).backward()
            step_loss += loss.item() / tp.grad_accum
            step_bal += balancing.item() / tp.grad_accum
            tokens_seen += info["tokens"] * env.world
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        check_finite(step, {"gradient norm": grad_norm}, latest)
        optimizer.step()
        scheduler.step()
        model.update_selection_bias()
        step += 1
        record = {"step": step, "train_loss": step_loss, "balancing_loss": step_bal, "lr": scheduler.get_last_lr()[0]}
        if step % tp.eval_every == 0 or step == tp.steps:
            record["val_loss"] = validation_loss(task, model, tp.batch_size, tp.eval_batches, env.device)
            if record["val_loss"] < best_val and env.main:
                best_val = record["val_loss"]
                save_checkpoint(best, {"model": model.state_dict(), "step": step, "val_loss": best_val,
                                       "config": config_fingerprint(config)})
        history.append(record)
        if live:
            _log_live(live, record)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        if env.main and (step % tp.checkpoint_every == 0 or step == tp.steps):
            save_checkpoint(latest, snapshot())
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    wall = time.perf_counter() - start
    if live:
        live.end()
    last = history[-min(len(history), 20):] if history else []
    metrics = {
        "steps": step,
        "train_loss": sum(r["train_loss"] for r in last) / max(len(last), 1),
        "best_val_loss": best_val,
        "final_val_loss": next((r["val_loss"] for r in reversed(history) if "val_loss" in r), None),
        "wall_s": wall,
        "train_tokens_per_s": tokens_seen / wall if wall > 0 else 0.0,
        "resumed_from_step": resumed_from,
        "world_size": env.world,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if env.main:
        write_metrics(metrics_path, metrics, config)
    return metrics


def _wrap_ddp(model, env):
    if env.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    # MoE: an expert that got no token this step has no gradient on this rank.
    return DistributedDataParallel(model, find_unused_parameters=True)


def _open_live(live_dir: Path, resumed: bool):
    from dvclive import Live
    return Live(str(live_dir), resume=resumed, save_dvc_exp=False, dvcyaml=None, report=None)


def _log_live(live, record: dict) -> None:
    live.step = record["step"]
    live.log_metric("train/loss", record["train_loss"])
    live.log_metric("train/balancing_loss", record["balancing_loss"])
    live.log_metric("train/lr", record["lr"])
    if "val_loss" in record:
        live.log_metric("val/loss", record["val_loss"])


def _py_rng_state(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
