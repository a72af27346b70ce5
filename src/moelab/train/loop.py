"""The training loop: AdamW, warmup + cosine, clipping, accumulation, resumable checkpoints, DVCLive.

A checkpoint directory belongs to one run fingerprint: its config, the training code, the tokenizer of
its data and the base it fine-tunes from (`fingerprint`):
  * under the same fingerprint an unfinished run resumes from latest.pt and finishes bit-identical to
    an uninterrupted one; a finished one is complete, and only its train metrics are rewritten (a
    variant's stage re-runs every seed when one seed is added, or after it was killed half-way:
    DVC's granularity is the stage, the seed's is this);
  * another fingerprint (or `restart=True`) starts fresh: the old checkpoints are moved aside to
    `.<variant>.<run>.previous` beside the variant's directory (its train metrics removed), and one line
    says so;
  * a fresh run with a base (`run.init_from`) starts from the base's weights, all but the routing
    (`load_base`), which is initialised afresh: SparTMoE's protocol;
  * the directory is locked while a process trains into it;
  * Ctrl-C saves a checkpoint at the last finished step and raises Interrupted (exit 130).

The loop (`Trainer`): start (fresh, from a base, or resumed), step, validate, finish.
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from ..study import RunPaths

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
    paths: RunPaths,
    progress: bool = True,
    stop_after: int | None = None,
    restart: bool = False,
    log=print,
) -> dict:
    """Train one run into paths.checkpoints (resuming or starting fresh, see the module doc); writes
    paths.train (+ its provenance) and DVCLive curves under paths.live. Returns the train metrics."""
    env = DistEnv()
    try:
        with directory_lock(paths.checkpoints, "checkpoints") if env.main else nullcontext():
            return _train(run, Path(data_dir), paths, env, progress, stop_after, restart, log)
    finally:
        env.close()


def fingerprint(run: RunConfig, data_dir: Path) -> dict:
    """Everything that decides a run's weights: its config, the training code, the tokenizer its data
    was made with and the base it fine-tunes from. A checkpoint resumes only under the same fingerprint."""
    from ..data.prepare import manifest

    inputs = {"tokenizer": manifest(data_dir).get("tokenizer_sha256")}
    if run.init_from:
        inputs["base"] = file_digest(Path(run.init_from) / BASE_CHECKPOINT)
    return {**run.to_dict(), "code": code_hash(), "inputs": inputs}


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


def aside_of(directory: Path) -> Path:
    """Where a run's directory <variant>/<run> goes when it starts fresh: .<variant>.<run>.previous beside
    the variant's directory, so outside the DVC output that directory is (DVC may remove a whole output,
    e.g. when `dvc exp run` checks out a pipeline without its stage, and never keeps what it ignores)."""
    return directory.parent.parent / f".{directory.parent.name}.{directory.name}.previous"


def _move_aside(paths: RunPaths, why: str, log) -> None:
    """Start fresh: the old checkpoints (and curves) are moved aside (aside_of), replacing what an earlier
    fresh start put there; the old train metrics, which would otherwise sit beside the new run until it
    finishes, are removed (a finished run keeps them in its latest.pt)."""
    out_dir = paths.checkpoints
    aside = aside_of(out_dir)
    replaced = aside.exists()
    for directory in (out_dir, paths.live):
        if not directory.exists():
            continue
        target = aside_of(directory)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for item in directory.iterdir():
            if item.name != ".lock":
                item.rename(target / item.name)
    for stale in (paths.train, meta_path(paths.train)):
        stale.unlink(missing_ok=True)
    what = "--restart" if why == "--restart" else f"{out_dir} held a run of another configuration ({why})"
    log(
        f"moelab train: {what}: moved that run to {aside}"
        f"{' (replacing the one moved there before)' if replaced else ''} and started fresh"
    )


@dataclass
class Progress:
    """What the loop carries from step to step and saves in latest.pt."""

    step: int = 0
    best_val: float = float("inf")
    history: list = field(default_factory=list)
    saved_step: int | None = None  # the step of latest.pt on disk (what a non-finite loss leaves to resume from)
    tokens_seen: int = 0


class Trainer:
    """One run's model, optimiser, schedule and data order, and the four things the loop does with
    them: start (fresh, from the base, or resumed), step, validate, finish."""

    def __init__(self, run: RunConfig, task, paths: RunPaths, env: DistEnv, config: dict, log):
        self.run, self.task, self.paths, self.env, self.config, self.log = run, task, paths, env, config, log
        self.latest, self.best = paths.checkpoints / "latest.pt", paths.checkpoints / "best.pt"
        self.model = task.build_model().to(env.device)
        self.model.record_routing_stats(False)  # only evaluate / benchmark read them
        self.optimizer, self.scheduler = build_optimizer(self.model, run.train)
        self.data_gen = torch.Generator().manual_seed(run.seed)
        self.progress = Progress()

    # ------------------------------------------------------------ start
    def start(self, state: dict | None) -> None:
        """Resume from `state` (latest.pt), or start fresh: from the base's weights when the run has one."""
        if state is None:
            if self.run.init_from:
                load_base(self.model, Path(self.run.init_from) / BASE_CHECKPOINT)
            return
        load_model_state(self.model, state, self.latest, self.config, ignore=NOT_TRAINING)
        _check_world_size(state, self.latest, self.env)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.data_gen.set_state(state["rng"]["data"])
        random.setstate(_py_rng(state["rng"]["python"]))
        p = self.progress
        p.step, p.best_val, p.history, p.saved_step = (
            state["step"],
            state["best_val"],
            state.get("history", []),
            state["step"],
        )

    # ------------------------------------------------------------ step
    def step(self, ddp, autocast) -> dict:
        """One optimiser step (grad_accum micro-batches); returns its record for the history."""
        tp, env, p = self.run.train, self.env, self.progress
        self.optimizer.zero_grad(set_to_none=True)
        step_loss, step_bal = 0.0, 0.0
        for _ in range(tp.grad_accum):
            batch = to_device(shard(self.task.train_batch(self.data_gen, tp.batch_size * env.world), env), env.device)
            with autocast:
                loss, info = task_loss(ddp, batch)
                balancing = self.model.balancing_loss().to(loss.device)
            self._check({"task loss": loss, "balancing loss": balancing})
            ((loss + balancing) / tp.grad_accum).backward()
            step_loss += loss.item() / tp.grad_accum
            step_bal += balancing.item() / tp.grad_accum
            p.tokens_seen += info["tokens"] * env.world
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tp.grad_clip)
        self._check({"gradient norm": grad_norm})
        self.optimizer.step()
        self.scheduler.step()
        self.model.update_balancing()
        p.step += 1
        if env.world > 1:  # the global-batch loss (mean of equal-sized rank shards), identical on every rank
            step_loss, step_bal = mean_over_ranks([step_loss, step_bal], env)
        return {
            "step": p.step,
            "train_loss": step_loss,
            "balancing_loss": step_bal,
            "lr": self.scheduler.get_last_lr()[0],
        }

    def _check(self, terms: dict) -> None:
        p = self.progress
        check_finite(p.step + 1, terms, self.latest, self.env, task=self.run.task, saved_step=p.saved_step)

    # ------------------------------------------------------------ validate
    def validate(self, record: dict) -> None:
        """Validation loss into `record`; a new best is saved to best.pt (the weights evaluation reads)."""
        tp, env, p = self.run.train, self.env, self.progress
        # the global batch size, so the validated windows do not depend on the world size
        record["val_loss"] = validation_loss(
            self.task, self.model, tp.batch_size * env.world, tp.eval_batches, env.device, env
        )
        if record["val_loss"] < p.best_val:  # every rank tracks best_val (same weights, same value)
            p.best_val = record["val_loss"]
            if env.main:
                weights = {
                    "model": self.model.state_dict(),
                    "step": p.step,
                    "val_loss": p.best_val,
                    "config": config_fingerprint(self.config),
                }
                save_checkpoint(self.best, weights)

    # ------------------------------------------------------------ checkpoints and the end
    def snapshot(self, metrics: dict | None = None) -> dict:
        p = self.progress
        out = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": p.step,
            "best_val": p.best_val,
            "history": p.history,
            "config": config_fingerprint(self.config),
            "world_size": self.env.world,
            "rng": {
                "torch": torch.get_rng_state(),
                "data": self.data_gen.get_state(),
                "python": _py_rng_state(random.getstate()),
            },
        }
        if metrics is not None:
            out["metrics"] = metrics
        return out

    def save_latest(self, metrics: dict | None = None) -> None:
        self.progress.saved_step = self.progress.step
        if self.env.main:
            save_checkpoint(self.latest, self.snapshot(metrics))
        self.env.barrier()  # no rank runs ahead of a checkpoint that rank 0 has not finished writing

    def finish(self, wall: float, resumed_from: int) -> dict:
        """The run's train metrics: written to paths.train and, once finished, kept in latest.pt."""
        p, tp = self.progress, self.run.train
        last = p.history[-min(len(p.history), 20) :] if p.history else []
        metrics = {
            "steps": p.step,
            "train_loss": sum(r["train_loss"] for r in last) / max(len(last), 1),
            "best_val_loss": p.best_val,
            "final_val_loss": next((r["val_loss"] for r in reversed(p.history) if "val_loss" in r), None),
            "wall_s": wall,
            "train_tokens": tp.steps * tp.batch_size * tp.grad_accum * self.env.world if p.step >= tp.steps else None,
            "train_tokens_per_s": p.tokens_seen / wall if wall > 0 else 0.0,
            "resumed_from_step": resumed_from,
            "world_size": self.env.world,
            "parameters": sum(x.numel() for x in self.model.parameters()),
        }
        if p.step >= tp.steps:
            self.save_latest(metrics)  # the finished run's metrics travel with its checkpoint
        if self.env.main:
            write_metrics(
                self.paths.train,
                metrics,
                self.run.to_dict(),
                {"code": self.config["code"], "inputs": self.config["inputs"]},
            )
        self.env.barrier()
        return metrics


def _train(run, data_dir: Path, paths: RunPaths, env, progress: bool, stop_after, restart: bool, log) -> dict:
    seed_everything(run.seed)
    task = build_task(run, data_dir)
    task.check_data()  # every split readable before anything is written
    config = fingerprint(run, data_dir)
    state, why = _resumable(paths.checkpoints / "latest.pt", config, restart)
    if env.main:
        remove_stale_temps(paths.checkpoints)  # half-written checkpoints of a killed run
        if state is None and why:
            _move_aside(paths, why, log)
    env.barrier()
    if state is not None and state["step"] >= run.train.steps and "metrics" in state:
        if env.main:  # finished under this very fingerprint: its metrics, rewritten from the checkpoint
            write_metrics(
                paths.train, state["metrics"], run.to_dict(), {"code": config["code"], "inputs": config["inputs"]}
            )
        return state["metrics"]
    trainer = Trainer(run, task, paths, env, config, log)
    trainer.start(state)
    return _loop(trainer, progress, stop_after)


def _loop(trainer: Trainer, progress: bool, stop_after: int | None) -> dict:
    """Steps until run.train.steps (or stop_after, or Ctrl-C), validating and checkpointing on schedule."""
    from tqdm.auto import tqdm

    run, env, p, tp = trainer.run, trainer.env, trainer.progress, trainer.run.train
    resumed_from = p.step
    ddp = wrap_ddp(trainer.model, env)
    live = None
    if env.main:
        from .live import open_live

        live = open_live(trainer.paths.live, resumed_from)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if env.device.type == "cuda" else nullcontext()
    trainer.model.train()
    start = time.perf_counter()
    bar = tqdm(
        total=tp.steps,
        initial=p.step,
        desc=f"train {run.task}/{run.name}/s{run.seed}",
        disable=not (progress and env.main),
        mininterval=1.0,
        dynamic_ncols=True,
    )
    with _interrupt_at_step_boundary() as interrupted:
        while p.step < tp.steps:
            if interrupted():
                trainer.save_latest()
                bar.close()
                raise Interrupted(
                    f"interrupted at step {p.step} of {tp.steps}: checkpoint saved to {trainer.latest}; "
                    "re-run the same command to resume"
                )
            record = trainer.step(ddp, autocast)
            if p.step % tp.eval_every == 0 or p.step == tp.steps:
                trainer.validate(record)
            p.history.append(record)
            if live:
                from .live import log_live

                log_live(live, record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}")
            if p.step % tp.checkpoint_every == 0 and p.step < tp.steps:
                trainer.save_latest()
            if stop_after is not None and p.step >= stop_after and p.step < tp.steps:
                trainer.save_latest()
                break
    bar.close()
    wall = time.perf_counter() - start
    if live:
        live.end()
    return trainer.finish(wall, resumed_from)


# ---------------------------------------------------------------- the base
BASE_CHECKPOINT = "best.pt"  # the weights of a base that its variants start from


def file_digest(path: Path) -> str:
    """sha256 (16 hex digits) of a file; a missing base is one CheckpointError line."""
    import hashlib

    from ..errors import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"base checkpoint {path} not found: run its pretrain stage first (dvc repro)")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def routing_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of every MoE layer's routing (router weights, balancing state): what a fine-tune
    from a base starts afresh. The experts (and shared experts) are kept."""
    from ..moe import MoELayer

    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, MoELayer):
            prefix = f"{name}." if name else ""
            keys |= {f"{prefix}{k}" for k in module.state_dict() if not k.startswith(("experts.", "shared_experts."))}
    return keys


@torch.no_grad()
def load_base(model: torch.nn.Module, path: Path) -> None:
    """Copy a base checkpoint's weights into `model`, all but the routing (routing_keys), which keeps
    the model's own fresh initialisation: SparTMoE's "pretrained experts, new routers". Every other
    weight must be in the base with the same shape (the base is the same model size)."""
    from ..errors import CheckpointError

    base = load_checkpoint(path)["model"]
    fresh = routing_keys(model)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in fresh and k not in base)
    if missing:
        raise CheckpointError(
            f"base {path} lacks {len(missing)} weights of this model (e.g. {missing[0]}): "
            "it is a base of another model size; re-run the pretrain stage"
        )
    for key, value in own.items():
        if key in fresh:
            continue
        if base[key].shape != value.shape:
            raise CheckpointError(
                f"base {path}: {key} has shape {tuple(base[key].shape)}, this model "
                f"{tuple(value.shape)}: it is a base of another model size"
            )
        value.copy_(base[key])


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
