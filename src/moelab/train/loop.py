"""The training loop: AdamW, warmup + cosine, clipping, accumulation, resumable checkpoints, DVCLive.

A models directory belongs to one run configuration (and the code that trains it):
  * the same configuration resumes from latest.pt and finishes bit-identical to an uninterrupted run;
    a finished run is not trained again (its train metrics are rewritten from the checkpoint);
  * another configuration (or `restart=True`) starts fresh: the old checkpoints are moved aside to
    `.<dir>.previous` beside the directory (its train metrics removed), and one line says so;
  * the directory is locked while a process trains into it;
  * Ctrl-C saves a checkpoint at the last finished step and raises Interrupted (exit 130).
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from ..checkpoint import (
    RESUME_KEYS,
    config_differences,
    config_fingerprint,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from ..config import RunConfig
from ..errors import MoelabError, NonFiniteLoss
from ..io import meta_path, remove_stale_temps, write_metrics
from ..locking import directory_lock
from ..provenance import code_hash
from ..tasks import build_task
from .distributed import DistEnv, mean_over_ranks, shard, sum_over_ranks, to_device, wrap_ddp
from .schedule import build_optimizer

NOT_TRAINING = ("evaluate",)  # config sections a checkpoint may differ in and still be resumed


class Interrupted(MoelabError):
    """Ctrl-C during training: a checkpoint was saved; exit status 130."""

    exit_code = 130


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def check_finite(
    step: int,
    terms: dict[str, torch.Tensor],
    ckpt: Path,
    env: DistEnv | None = None,
    *,
    task: str = "<task>",
    saved_step: int | None = None,
) -> None:
    """Raise NonFiniteLoss naming the step (1-based, the one being computed), the first bad term and
    what to do; `saved_step`: the step of the checkpoint at `ckpt` (None: none written yet).

    Under DDP the verdict is all-reduced, so every rank stops together instead of one rank raising
    while the others wait forever in the next collective."""
    import torch.distributed as dist

    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()).all())]
    if env is not None and env.world > 1:
        flags = torch.tensor([float(name in bad) for name in terms], device=env.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = [name for name, flag in zip(terms, flags.tolist()) if flag > 0]
    if bad:
        name = bad[0]
        value = terms[name].detach().float().reshape(-1)
        shown = value[~torch.isfinite(value)][:1].tolist() or ["non-finite on another rank"]
        knob = "moe.aux_loss_coef / moe.z_loss_coef" if name == "balancing loss" else f"{task}.train.lr"
        if saved_step is None:
            where, same = f"no checkpoint written yet ({ckpt})", "start from step 0 again"
        else:
            where = f"last good checkpoint {ckpt} (step {saved_step}) left intact"
            same = f"resume from step {saved_step} (--restart: from step 0)"
        raise NonFiniteLoss(
            f"step {step}: {name} is {shown[0]} (non-finite); training stopped, {where}: lower {knob} in "
            f"params.yaml or check the data, then re-run: a changed value starts a fresh run (the old "
            f"checkpoints are moved aside), the same values {same}"
        )


@torch.no_grad()
def validation_loss(task, model, batch_size: int, max_batches: int, device, env: DistEnv | None = None) -> float:
    """Token-weighted mean loss over the first max_batches validation batches of batch_size rows.

    batch_size is the global batch: under DDP each rank computes rows rank::world of every batch and
    the sums are all-reduced, so the value (identical on every rank) covers the same windows as a
    single process with that batch size, whatever the world size."""
    model.eval()
    total, count = 0.0, 0
    for batch in task.eval_batches("validation", batch_size, max_batches):
        if env is not None:
            batch = shard(batch, env)
        if next(iter(batch.values())).shape[0] == 0:  # a last, short batch with fewer rows than ranks
            continue
        loss, info = task_loss(model, to_device(batch, device))
        if info["tokens"]:
            total += loss.item() * info["tokens"]
            count += info["tokens"]
    model.train()
    if env is not None and env.world > 1:
        total, count = sum_over_ranks([total, float(count)], env)
    return total / max(count, 1)


def task_loss(model, batch):
    """(loss, info) of the model; with DDP the forward runs through the wrapper so gradients sync."""
    core = getattr(model, "module", model)
    return core.loss(batch, forward=model)


def train(
    run: RunConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    live_dir: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    restart: bool = False,
    log=print,
) -> dict:
    """Train one run into out_dir (resuming or starting fresh, see the module doc). Returns the train metrics."""
    env = DistEnv()
    out_dir = Path(out_dir)
    try:
        with directory_lock(out_dir, "checkpoints") if env.main else nullcontext():
            return _train(
                run,
                Path(data_dir),
                out_dir,
                Path(metrics_path),
                Path(live_dir) if live_dir else None,
                env,
                progress,
                stop_after,
                restart,
                log,
            )
    finally:
        env.close()


def _fingerprint(run: RunConfig) -> dict:
    return {**run.to_dict(), "code": code_hash()}


def _resumable(latest: Path, config: dict, restart: bool) -> tuple[dict | None, str]:
    """The checkpoint to resume from (None: start fresh) and why not, when there is one."""
    if not latest.exists():
        return None, ""
    if restart:
        return None, "--restart"
    state = load_checkpoint(latest, required=RESUME_KEYS)
    diff = config_differences(state.get("config"), config, NOT_TRAINING)
    return (
        (None, "; ".join(diff[:2]) + (f"; and {len(diff) - 2} more" if len(diff) > 2 else "")) if diff else (state, "")
    )


def _move_aside(out_dir: Path, live_dir: Path | None, metrics_path: Path, why: str, log) -> None:
    """Start fresh: the old checkpoints (and curves) go to .<name>.previous beside their directory,
    replacing what an earlier fresh start put there; the old train metrics, which would otherwise
    sit beside the new run until it finishes, are removed (a finished run keeps them in its latest.pt)."""
    aside = out_dir.parent / f".{out_dir.name}.previous"
    replaced = aside.exists()
    for directory in (out_dir, live_dir):
        if directory is None or not directory.exists():
            continue
        target = directory.parent / f".{directory.name}.previous"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for item in directory.iterdir():
            if item.name != ".lock":
                item.rename(target / item.name)
    for stale in (metrics_path, meta_path(metrics_path)):
        stale.unlink(missing_ok=True)
    what = "--restart" if why == "--restart" else f"{out_dir} held a run of another configuration ({why})"
    log(
        f"moelab train: {what}: moved that run to {aside}"
        f"{' (replacing the one moved there before)' if replaced else ''} and started fresh"
    )


def _train(run, data_dir, out_dir, metrics_path, live_dir, env, progress, stop_after, restart, log) -> dict:
    tp = run.train
    seed_everything(run.seed)
    task = build_task(run, data_dir)
    task.check_data()  # every split readable before anything is written
    config = _fingerprint(run)
    latest, best = out_dir / "latest.pt", out_dir / "best.pt"
    state, why = _resumable(latest, config, restart)
    if env.main:
        remove_stale_temps(out_dir)  # half-written checkpoints of a killed run
        if state is None and why:
            _move_aside(out_dir, live_dir, metrics_path, why, log)
    env.barrier()
    if state is not None and state["step"] >= tp.steps and "metrics" in state:
        if env.main:  # finished: nothing to train, rewrite its metrics
            write_metrics(metrics_path, state["metrics"], run.to_dict(), {"code": config["code"]})
        return state["metrics"]
    model = task.build_model().to(env.device)
    model.record_routing_stats(False)  # only evaluate / benchmark read them
    optimizer, scheduler = build_optimizer(model, tp)
    data_gen = torch.Generator().manual_seed(run.seed)
    step, best_val, history = 0, float("inf"), []
    saved_step = None  # the step of latest.pt on disk (what a non-finite loss leaves to resume from)
    if state is not None:
        load_model_state(model, state, latest, config, ignore=NOT_TRAINING)
        _check_world_size(state, latest, env)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        data_gen.set_state(state["rng"]["data"])
        random.setstate(_py_rng(state["rng"]["python"]))
        step, best_val, history = state["step"], state["best_val"], state.get("history", [])
        saved_step = step
    resumed_from = step
    ddp = wrap_ddp(model, env)
    live = None
    if env.main and live_dir:
        from .live import open_live

        live = open_live(live_dir, resumed_from)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if env.device.type == "cuda" else nullcontext()

    def snapshot(metrics: dict | None = None) -> dict:
        out = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best_val": best_val,
            "history": history,
            "config": config_fingerprint(config),
            "world_size": env.world,
            "rng": {
                "torch": torch.get_rng_state(),
                "data": data_gen.get_state(),
                "python": _py_rng_state(random.getstate()),
            },
        }
        if metrics is not None:
            out["metrics"] = metrics
        return out

    def save_latest(metrics: dict | None = None) -> None:
        nonlocal saved_step
        saved_step = step
        if env.main:
            save_checkpoint(latest, snapshot(metrics))
        env.barrier()  # no rank runs ahead of a checkpoint that rank 0 has not finished writing

    from tqdm.auto import tqdm

    model.train()
    start, tokens_seen = time.perf_counter(), 0
    bar = tqdm(
        total=tp.steps,
        initial=step,
        desc=f"train {run.task}/{run.name}/s{run.seed}",
        disable=not (progress and env.main),
        mininterval=1.0,
        dynamic_ncols=True,
    )
    with _interrupt_at_step_boundary() as interrupted:
        while step < tp.steps:
            if interrupted():
                save_latest()
                bar.close()
                raise Interrupted(
                    f"interrupted at step {step} of {tp.steps}: checkpoint saved to {latest}; "
                    "re-run the same command to resume"
                )
            optimizer.zero_grad(set_to_none=True)
            step_loss, step_bal = 0.0, 0.0
            for _ in range(tp.grad_accum):
                batch = to_device(shard(task.train_batch(data_gen, tp.batch_size * env.world), env), env.device)
                with autocast:
                    loss, info = task_loss(ddp, batch)
                    balancing = model.balancing_loss().to(loss.device)
                terms = {"task loss": loss, "balancing loss": balancing}
                check_finite(step + 1, terms, latest, env, task=run.task, saved_step=saved_step)
                ((loss + balancing) / tp.grad_accum).backward()
                step_loss += loss.item() / tp.grad_accum
                step_bal += balancing.item() / tp.grad_accum
                tokens_seen += info["tokens"] * env.world
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            check_finite(step + 1, {"gradient norm": grad_norm}, latest, env, task=run.task, saved_step=saved_step)
            optimizer.step()
            scheduler.step()
            model.update_balancing()
            step += 1
            if env.world > 1:  # the global-batch loss (mean of equal-sized rank shards), identical on every rank
                step_loss, step_bal = mean_over_ranks([step_loss, step_bal], env)
            record = {
                "step": step,
                "train_loss": step_loss,
                "balancing_loss": step_bal,
                "lr": scheduler.get_last_lr()[0],
            }
            if step % tp.eval_every == 0 or step == tp.steps:
                # the global batch size, so the validated windows do not depend on the world size
                record["val_loss"] = validation_loss(
                    task, model, tp.batch_size * env.world, tp.eval_batches, env.device, env
                )
                if record["val_loss"] < best_val:  # every rank tracks best_val (same weights, same value)
                    best_val = record["val_loss"]
                    if env.main:
                        save_checkpoint(
                            best,
                            {
                                "model": model.state_dict(),
                                "step": step,
                                "val_loss": best_val,
                                "config": config_fingerprint(config),
                            },
                        )
            history.append(record)
            if live:
                from .live import log_live

                log_live(live, record)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if step % tp.checkpoint_every == 0 and step < tp.steps:
                save_latest()
            if stop_after is not None and step >= stop_after and step < tp.steps:
                save_latest()
                break
    bar.close()
    wall = time.perf_counter() - start
    if live:
        live.end()
    last = history[-min(len(history), 20) :] if history else []
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
    if step >= tp.steps:
        save_latest(metrics)  # the finished run's metrics travel with its checkpoint
    if env.main:
        write_metrics(metrics_path, metrics, run.to_dict(), {"code": config["code"]})
    env.barrier()
    return metrics


@contextmanager
def _interrupt_at_step_boundary():
    """The first Ctrl-C (SIGINT) only sets a flag the loop checks between steps, so the checkpoint it
    then saves is never of a half-applied optimiser step; a second Ctrl-C interrupts at once."""
    hit = []

    def handler(signum, frame):
        hit.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    installed = False
    try:
        previous = signal.signal(signal.SIGINT, handler)
        installed = True
    except ValueError:  # not the main thread (e.g. tests calling train() from a thread)
        previous = None
    try:
        yield lambda: bool(hit)
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


def _check_world_size(state: dict, path: Path, env: DistEnv) -> None:
    """The global batch is batch_size x world size: resuming with another world size would change it mid-run."""
    from ..errors import CheckpointError

    written_by = state.get("world_size", 1)
    if written_by != env.world:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with world size {written_by}, this run has "
            f"world size {env.world}: resume with `torchrun --nproc_per_node {written_by}` "
            f"(the same global batch), or re-run with --restart"
        )


def _py_rng_state(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
