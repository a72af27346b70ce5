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

from .checkpoint import CheckpointError, config_fingerprint, load_checkpoint, load_model_state, save_checkpoint
from .config import RunConfig
from .io import remove_stale_temps, write_metrics
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

    def barrier(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def shard(batch: dict, env: DistEnv) -> dict:
    """Every rank draws the same global batch and keeps rows rank, rank + world, ..."""
    return {k: v[env.rank::env.world] for k, v in batch.items()} if env.world > 1 else batch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def check_finite(step: int, terms: dict[str, torch.Tensor], ckpt: Path, env: "DistEnv | None" = None) -> None:
    """Raise NonFiniteLoss naming the step (1-based, the one being computed) and the first bad term.

    Under DDP the verdict is all-reduced, so every rank stops together instead of one rank raising
    while the others wait forever in the next collective."""
    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()).all())]
    if env is not None and env.world > 1:
        flags = torch.tensor([float(name in bad) for name in terms], device=env.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = [name for name, flag in zip(terms, flags.tolist()) if flag > 0]
    if bad:
        name = bad[0]
        value = terms[name].detach().float().reshape(-1)
        shown = value[~torch.isfinite(value)][:1].tolist() or ["non-finite on another rank"]
        where = f"{ckpt} left intact" if ckpt.exists() else f"no checkpoint written yet ({ckpt})"
        raise NonFiniteLoss(f"step {step}: {name} is {shown[0]} (non-finite); training stopped, last good checkpoint "
                            f"{where}: lower {'the learning rate' if name != 'balancing loss' else 'moe.aux_loss_coef / moe.z_loss_coef'}"
                            f" or check the data, then re-run (it resumes from the checkpoint)")


@torch.no_grad()
def validation_loss(task, model, batch_size: int, max_batches: int, device, env: "DistEnv | None" = None) -> float:
    """Token-weighted mean loss over the first max_batches validation batches of batch_size rows.

    batch_size is the global batch: under DDP each rank computes rows rank::world of every batch and
    the sums are all-reduced, so the value (identical on every rank) covers the same windows as a
    single process with that batch size, whatever the world size."""
    model.eval()
    total, count = 0.0, 0
    for batch in task.eval_batches("validation", batch_size, max_batches):
        if env is not None:
            batch = shard(batch, env)
        if next(iter(batch.values())).shape[0] == 0:    # a last, short batch with fewer rows than ranks
            continue
        loss, info = task_loss(task, model, to_device(batch, device))
        if info["tokens"]:
            total += loss.item() * info["tokens"]
            count += info["tokens"]
    model.train()
    if env is not None and env.world > 1:
        total, count = _sum_over_ranks([total, float(count)], env)
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
    task.check_data()                        # every split readable before anything is written
    if env.main:
        remove_stale_temps(out_dir)          # half-written checkpoints of a killed run
    model = task.build_model().to(env.device)
    model.record_routing_stats(False)        # only evaluate / benchmark read them
    optimizer = torch.optim.AdamW(param_groups(model, tp.weight_decay), lr=tp.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tp.warmup_steps, tp.steps, tp.min_lr_ratio))
    data_gen = torch.Generator().manual_seed(run.seed)
    config = run.to_dict()
    latest, best = out_dir / "latest.pt", out_dir / "best.pt"
    step, best_val, history = 0, float("inf"), []
    if latest.exists():
        state = load_checkpoint(latest)
        load_model_state(model, state, latest, config, ignore=("evaluate",))
        _check_world_size(state, latest, env)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        data_gen.set_state(state["rng"]["data"])
        random.setstate(_py_rng(state["rng"]["python"]))
        step, best_val, history = state["step"], state["best_val"], state.get("history", [])
    resumed_from = step
    ddp = _wrap_ddp(model, env)
    live = _open_live(live_dir, resumed_from) if env.main and live_dir else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if env.device.type == "cuda" else nullcontext())

    def snapshot() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "best_val": best_val, "history": history, "config": config_fingerprint(config),
                "world_size": env.world,
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
            check_finite(step + 1, {"task loss": loss, "balancing loss": balancing}, latest, env)
            ((loss + balancing) / tp.grad_accum).backward()
            step_loss += loss.item() / tp.grad_accum
            step_bal += balancing.item() / tp.grad_accum
            tokens_seen += info["tokens"] * env.world
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        check_finite(step + 1, {"gradient norm": grad_norm}, latest, env)
        optimizer.step()
        scheduler.step()
        model.update_selection_bias()
        step += 1
        if env.world > 1:   # log the global-batch loss (mean of equal-sized rank shards), identical on every rank
            step_loss, step_bal = _mean_over_ranks([step_loss, step_bal], env)
        record = {"step": step, "train_loss": step_loss, "balancing_loss": step_bal, "lr": scheduler.get_last_lr()[0]}
        if step % tp.eval_every == 0 or step == tp.steps:
            # the global batch size, so the validated windows do not depend on the world size
            record["val_loss"] = validation_loss(task, model, tp.batch_size * env.world, tp.eval_batches,
                                                 env.device, env)
            if record["val_loss"] < best_val:    # every rank tracks best_val (same weights, same value)
                best_val = record["val_loss"]
                if env.main:
                    save_checkpoint(best, {"model": model.state_dict(), "step": step, "val_loss": best_val,
                                           "config": config_fingerprint(config)})
        history.append(record)
        if live:
            _log_live(live, record)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        if step % tp.checkpoint_every == 0 or step == tp.steps:
            if env.main:
                save_checkpoint(latest, snapshot())
            env.barrier()   # no rank runs ahead of a checkpoint that rank 0 has not finished writing
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
    env.barrier()
    return metrics


def _check_world_size(state: dict, path: Path, env: DistEnv) -> None:
    """The global batch is batch_size x world size: resuming with another world size would change it mid-run."""
    written_by = state.get("world_size", 1)
    if written_by != env.world:
        raise CheckpointError(f"checkpoint {path} was written by a run with world size {written_by}, this run has "
                              f"world size {env.world}: resume with `torchrun --nproc_per_node {written_by}` "
                              f"(the same global batch), or delete it to restart")


def _wrap_ddp(model, env):
    if env.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    # MoE: an expert that got no token this step has no gradient on this rank.
    # broadcast_buffers=False: the only buffers are the selection bias (kept identical on every rank by
    # SelectionBias.update's all-reduce) and its per-rank load counts, which rank 0 must not overwrite
    # between the micro-batches of a gradient-accumulation step.
    return DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)


def _sum_over_ranks(values: list[float], env: DistEnv) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def _mean_over_ranks(values: list[float], env: DistEnv) -> list[float]:
    return [v / env.world for v in _sum_over_ranks(values, env)]


def _open_live(live_dir: Path, resumed_from: int):
    """DVCLive log; on resume, rows logged after the checkpoint (by the killed run) are dropped first,
    so the replayed steps are not logged twice."""
    from dvclive import Live
    if resumed_from > 0:
        _truncate_live(live_dir, resumed_from)
    return Live(str(live_dir), resume=resumed_from > 0, save_dvc_exp=False, dvcyaml=None, report=None)


def _truncate_live(live_dir: Path, last_step: int) -> None:
    from .io import atomic_write_text
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        head, keep = lines[0].split("\t"), [lines[0]]
        col = head.index("step") if "step" in head else None
        for line in lines[1:]:
            cells = line.split("\t")
            try:
                ok = col is not None and len(cells) == len(head) and int(cells[col]) <= last_step
                if ok:
                    float(cells[-1])
            except ValueError:
                ok = False       # a half-written row of the killed run
            if ok:
                keep.append(line)
        atomic_write_text(tsv, "\n".join(keep) + "\n")


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
