"""One model's process (`python -m moelab.paper.model JOB.json`): the preset's build from the checkpoint
directory, then every variant: restore, reroute, training steps, FLOPs, generation, ROUGE."""

from __future__ import annotations

import gc
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, MoelabError
from .preset import BATCH_ROWS, GIB, PaperSmokeError, variant_names
from .standins import build_stand_in


@dataclass(frozen=True)
class ModelJob:
    """What one model's process runs (a JSON file: `python -m moelab.paper.model JOB.json`)."""

    name: str
    config: dict  # SwitchTransformersConfig.to_dict() of the stand-in
    build: bool  # write a random-weight stand-in into checkpoint first
    checkpoint: str
    params: str
    data_dir: str
    variants: tuple[tuple[str, str], ...]
    steps: int
    threads: int
    autocast: bool
    seed: int
    result: str


def run_model_job(job: ModelJob) -> None:
    """The child process: build (stand-in) -> the preset's model -> every variant; rows go to job.result as they
    finish (a crash leaves the finished ones). A MoelabError becomes {"error": ...} for the parent to report."""
    import torch
    from transformers.utils import logging as hf_logging

    # glibc's default allocator, not the retained heap every other moelab command keeps (cpu.keep_freed_memory):
    # at this size that heap holds GiBs of freed, fragmented activations (switch-base-8, top-2: a 16.7 GiB peak
    # against about 14 GiB live), which the 20 GiB cap cannot spare and which would hide each variant's own peak.
    # Tensors above 32 MiB are then mmapped and returned on free; the steps pay their page faults (a few %).
    torch.set_num_threads(job.threads)
    hf_logging.disable_progress_bar()  # save_pretrained / from_pretrained bars: one line per finished step instead
    out: dict = {"variants": {}}
    try:
        _run_model(job, out)
    except MoelabError as err:
        out["error"] = " ".join(str(err).split())
    out["process_peak_rss_gib"] = _vm_kib("VmHWM") / 2**20
    out["moelab_modules"] = sorted(m for m in sys.modules if m == "moelab" or m.startswith("moelab."))
    _write_result(job.result, out)


def _run_model(job: ModelJob, out: dict) -> None:
    import torch

    from ..resolve import load_params, resolve_run
    from ..tasks.summarization import SummarizationTask

    start = time.perf_counter()
    if job.build:
        out["build_s"] = build_stand_in(job.config, Path(job.checkpoint), job.seed)
        print(f"{job.name}: random-weight STAND-IN written to {job.checkpoint} ({out['build_s']:.0f} s)", flush=True)
    params = load_params(job.params)
    runs = [resolve_run(params, task="summarization", router=r, gate=g, model="paper") for r, g in job.variants]
    task = SummarizationTask(runs[0], Path(job.data_dir))
    task.check_data()
    batch, tokens = task.bench_batch(torch.Generator().manual_seed(job.seed), BATCH_ROWS)
    out.update(source_len=batch["input_ids"].shape[1], target_len=batch["labels"].shape[1], batch_rows=BATCH_ROWS)
    load = time.perf_counter()
    torch.manual_seed(job.seed)
    model = task.build_model()  # the preset's own path: from_pretrained(<dir>) + the router swap
    out["load_s"] = time.perf_counter() - load
    out["params_total"] = sum(p.numel() for p in model.parameters())
    print(f"{job.name}: {out['params_total']:,} parameters, through the preset in {out['load_s']:.0f} s", flush=True)
    for i, run in enumerate(runs):
        variant_task = SummarizationTask(run, Path(job.data_dir))
        row = measure_variant(model, variant_task, run, batch, tokens, job, fresh=i == 0)
        out["variants"][run.gating] = row
        _write_result(job.result, out)
        print(_progress_line(job.name, run.gating, row), flush=True)
    gates = {f"{r}-{g}": g for r, g in job.variants}
    out["study_train_flops_per_step"] = study_train_flops(out["variants"], gates, params, job.data_dir, batch, tokens)
    out["wall_s"] = time.perf_counter() - start


def study_train_flops(measured: dict, gates: dict, params, data_dir: str, batch: dict, tokens: int) -> dict:
    """Training FLOPs of one step on the smoke's batch for each of the six SparTMoE variants: counted for the
    variants the smoke ran; for the others 3 x the analytic forward count (in every variant run the backward
    counts exactly twice the forward) at the realised experts per token of a variant run with the same gate
    (the gate's k, or every expert, where none ran)."""
    from ..resolve import resolve_run
    from ..tasks.summarization import SummarizationTask

    out = {}
    for router, gate in variant_names():
        name = f"{router}-{gate}"
        if name in measured:
            out[name] = measured[name]["train_flops_per_step_counted"]
            continue
        same_gate = next((measured[v] for v, g in gates.items() if g == gate and v in measured), None)
        realised = same_gate["experts_per_token_per_layer"] if same_gate else None
        run = resolve_run(params, task="summarization", router=router, gate=gate, model="paper")
        forward = SummarizationTask(run, Path(data_dir)).batch_flops_per_token(batch, realised)["total"] * tokens
        out[name] = 3 * forward
    return out


def _write_result(path: str, out: dict) -> None:
    from ..io import write_json

    write_json(path, out)


def _progress_line(model: str, variant: str, row: dict) -> str:
    steps = ", ".join(f"{s:.1f}" for s in row["step_s"])
    return (
        f"{model} {variant}: steps {steps} s, peak RSS {row['peak_rss_gib']:.1f} GiB, "
        f"{row['experts_per_token']:.2f} experts/token, "
        f"FLOPs analytic/counted {row['flops_analytic_over_counted']:.6f}, "
        f"ROUGE-L {row['rougeL']:.3f}"
    )


def measure_variant(model, task, run, batch: dict, tokens: int, job: ModelJob, fresh: bool) -> dict:
    """Restore the checkpoint and give the model this variant's routing (unless the preset's build just did),
    run job.steps training steps and generate SUMMARIES summaries; everything one row of the table holds."""
    import torch

    from ..bench.models import PeakMemory, parameter_counts
    from ..tasks.summarization import rouge_scores

    row: dict = {"rss_at_start_gib": _vm_kib("VmRSS") / 2**20}
    with PeakMemory(torch.device("cpu")) as peak:
        setup = time.perf_counter()
        if not fresh:
            restore_checkpoint(model, run, task)
            torch.manual_seed(job.seed)
            reroute(model, task, run)
        row["setup_s"] = time.perf_counter() - setup
        first = train_steps(model, task, run, batch, job)
        realised = first.pop("realised")
        analytic = task.batch_flops_per_token(batch, realised)
        gen = time.perf_counter()
        model.eval()
        with torch.no_grad():  # as `moelab evaluate` runs it: no autocast
            predictions, references, _ = task._generate(model, "test", progress=False)
        row["generate_s"] = time.perf_counter() - gen
    row.update(first)
    row.update(parameter_counts(model, realised))
    row.update(
        experts_per_token=sum(realised) / len(realised),
        experts_per_token_per_layer=realised,
        flops_per_token_analytic=analytic["total"],
        flops_per_token_counted=row["forward_flops_counted"] / tokens,
        flops_analytic_over_counted=analytic["total"] / (row["forward_flops_counted"] / tokens),
        tokens_per_step=tokens,
        peak_rss_gib=peak.mib / 1024,
        summaries=len(predictions),
        **rouge_scores(predictions, references),
    )
    return row


def train_steps(model, task, run, batch: dict, job: ModelJob) -> dict:
    """job.steps steps of train/loop.py's step with the preset's optimiser and schedule (build_optimizer:
    AdamW; zero_grad(set_to_none), forward under autocast, CE + balancing loss, backward, clipping, step,
    schedule, balancing update). The first step also collects the routing statistics (the realised experts per
    token), counts its forward and backward FLOPs and measures the activations its forward saves."""
    import torch

    from ..evaluate import StatsCollector
    from ..train.schedule import build_optimizer

    if run.train.grad_accum != 1:
        raise ConfigError(f"summarization.train.grad_accum = {run.train.grad_accum}: the smoke runs one batch a step")
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if job.autocast else nullcontext
    model.train()
    optimizer, scheduler = build_optimizer(model, run.train)
    collector = StatsCollector(model)
    out: dict = {"step_s": [], "loss": []}
    for step in range(job.steps):
        model.record_routing_stats(step == 0)  # as in training, no statistics after the first step
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            terms = _counted_forward_backward(model, batch, autocast, collector, out)
        else:
            terms = _forward(model, batch, autocast)
            _backward(terms)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
        _check_finite(job.name, run.gating, step, {**terms, "gradient norm": grad_norm})
        optimizer.step()
        scheduler.step()
        model.update_balancing()
        out["step_s"].append(time.perf_counter() - start)
        out["loss"].append(terms["loss"].item())
    out["realised"] = [layer["experts_per_token"] for layer in collector.summary()["layers"]]
    out["train_flops_per_step_counted"] = out["forward_flops_counted"] + out["backward_flops_counted"]
    out["s_per_step"] = out["step_s"][-1]  # the last step: the first also pays for first-touch memory and counting
    del optimizer, scheduler  # the AdamW moments: the next variant starts without them
    model.zero_grad(set_to_none=True)
    gc.collect()
    return out


def _forward(model, batch: dict, autocast) -> dict:
    with autocast():
        loss, _ = model.loss(batch)
        return {"loss": loss, "balancing": model.balancing_loss()}


def _backward(terms: dict) -> None:
    (terms["loss"] + terms["balancing"]).backward()


def _counted_forward_backward(model, batch: dict, autocast, collector, out: dict) -> dict:
    """The first step's forward and backward, each counted by FlopCounterMode; the forward with routing
    statistics collected and the activations it saves for backward measured."""
    from ..flops import counted_flops

    terms: dict = {}
    with collector.collecting(), saved_activations(model) as saved:
        out["forward_flops_counted"] = counted_flops(lambda: terms.update(_forward(model, batch, autocast)))
    out["backward_flops_counted"] = counted_flops(lambda: _backward(terms))
    out["saved_activations_gib"] = saved["bytes"] / GIB
    return terms


def _check_finite(model: str, variant: str, step: int, terms: dict) -> None:
    import torch

    for name, value in terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            raise PaperSmokeError(f"{model} {variant} step {step + 1}: {name} is not finite ({value.item()})")


@contextmanager
def saved_activations(model):
    """{"bytes": ...}: the storage bytes of the tensors autograd saves for backward while the block runs, each
    storage once and the parameters left out (they are counted as parameters). Under autocast it includes the
    low-precision copies of the weights kept for backward, as on a GPU."""
    import torch

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    counted = {"bytes": 0}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield counted
    counted["bytes"] = sum(storages.values())


def restore_checkpoint(model, run, task) -> None:
    """Every weight of `model` but its routers back to the checkpoint's (the previous variant trained them): the
    checkpoint loaded again with from_pretrained, each sparse MLP's experts copied as the preset's swap copies
    them (wi.weight [f, d] -> w_in[e] [d, f]); a weight left unrestored is an error, never a silent carry-over."""
    import torch
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    from ..models.switch import load_hf

    fresh = load_hf(run.model, task.vocab_size, task.pad, task.eos)
    ours = dict(model.hf.named_parameters(remove_duplicate=False))
    restored: set[int] = set()
    with torch.no_grad():
        for name, weight in fresh.named_parameters(remove_duplicate=False):
            if ".mlp.experts." in name or ".mlp.router." in name:
                continue
            ours[name].copy_(weight)
            restored.add(id(ours[name]))
        for name, sparse in fresh.named_modules():
            if not isinstance(sparse, SwitchTransformersSparseMLP):
                continue
            experts = model.hf.get_submodule(name).moe.experts
            for e in range(experts.w_in.shape[0]):
                experts.w_in[e].copy_(sparse.experts[f"expert_{e}"].wi.weight.T)
                experts.w_out[e].copy_(sparse.experts[f"expert_{e}"].wo.weight.T)
            restored |= {id(experts.w_in), id(experts.w_out)}
    left = [n for n, p in model.hf.named_parameters() if id(p) not in restored and ".mlp.moe.router." not in n]
    if left:
        raise PaperSmokeError(f"{len(left)} weights of the model are not in the checkpoint, e.g. {left[0]}")
    del fresh
    gc.collect()


def reroute(model, task, run) -> None:
    """Give every MoE layer of `model` the routing of `run`'s variant (its encoder / decoder MoE configs, as the
    preset builds them) with fresh routers, around the experts the layer already holds."""
    from ..models.switch import MoESparseMLP, stack_moe_configs

    encoder, decoder = stack_moe_configs(run.model, run.data.max_target_len, task.hf_config)
    for name, wrapper in model.hf.named_modules():
        if isinstance(wrapper, MoESparseMLP):
            cfg = decoder if name.startswith("decoder.") else encoder
            wrapper.moe = routing_around(wrapper.moe.experts, cfg, run.model.init)


def routing_around(experts, cfg, init):
    """A MoELayer with cfg's router, normaliser, selection and balancing (a fresh router, initialised with
    `init`) around an existing bank of mlp experts of cfg's shape. MoELayer(cfg) would first allocate and
    initialise E experts of its own only for them to be dropped (2.5 s a layer at E = 8 on one core of this
    machine, 5 s at E = 16), so the layer is built with 1-wide experts and then handed the real ones."""
    from ..moe import MoELayer

    shape = (cfg.n_routed, cfg.d_model, cfg.expert_width)
    if cfg.expert != "mlp" or cfg.n_shared or tuple(experts.w_in.shape) != shape:
        raise PaperSmokeError(
            f"cannot reroute experts of shape {tuple(experts.w_in.shape)} to a {cfg.expert} layer of shape {shape} "
            f"with {cfg.n_shared} shared experts"
        )
    cfg.validate()
    layer = MoELayer(cfg.replace(d_ff=cfg.expert_granularity))
    layer.experts, layer.cfg = experts, cfg
    layer.router.reset_parameters(init)
    return layer


def _vm_kib(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process in KiB (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":  # one model's process (_run_child)
    run_model_job(ModelJob(**json.loads(Path(sys.argv[1]).read_text())))
