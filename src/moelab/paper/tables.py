"""The smoke's metrics and its two tables: per model x variant, and the GPU cost of the preset."""

from __future__ import annotations

from .preset import GIB, PRESET_COMMAND, SEEDS, SUMMARIES

# GPU cost: dense bf16 tensor-core peaks (NVIDIA data sheets: A100 SXM 312 TFLOPS, H100 SXM 989 TFLOPS, no sparsity)
GPUS = {"A100": 312e12, "H100 SXM": 989e12}
UTILISATION = 0.3  # the stated model-FLOPs utilisation the GPU-hours assume
TRAIN_BYTES_PER_PARAM = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments
ROW_KEYS = (  # per variant, in this order (numbers only)
    "params_total",
    "params_active",
    "experts_per_token",
    "experts_per_token_per_layer",
    "step_s",
    "s_per_step",
    "loss",
    "setup_s",
    "generate_s",
    "peak_rss_gib",
    "rss_at_start_gib",
    "tokens_per_step",
    "flops_per_token_analytic",
    "flops_per_token_counted",
    "flops_analytic_over_counted",
    "forward_flops_counted",
    "backward_flops_counted",
    "train_flops_per_step_counted",
    "saved_activations_gib",
    "summaries",
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
)
MODEL_KEYS = ("params_total", "batch_rows", "source_len", "target_len", "build_s", "load_s", "process_peak_rss_gib")


def smoke_metrics(results: dict, wall_s: float) -> dict:
    """{model: {its figures, "variants": {variant: row}, "study_train_flops_per_step": ...}} plus the whole
    run's wall time and peak memory."""
    out: dict = {
        "wall_s": wall_s,
        "peak_rss_gib": max(r["process_peak_rss_gib"] for r in results.values()),
    }
    for name, result in results.items():
        model = {k: result[k] for k in MODEL_KEYS if k in result}
        model["steps"] = len(next(iter(result["variants"].values()))["step_s"])
        model["variants"] = {v: {k: row[k] for k in ROW_KEYS} for v, row in result["variants"].items()}
        model["study_train_flops_per_step"] = result["study_train_flops_per_step"]
        out[name] = model
    return out


def _variants(model: dict) -> dict[str, dict]:
    return model["variants"]


def _models(metrics: dict) -> dict[str, dict]:
    return {k: v for k, v in metrics.items() if isinstance(v, dict)}


def smoke_table(metrics: dict) -> str:
    head = (
        "| model | variant | params | active | experts/token | s/step (steps) | peak RSS GiB | "
        "FLOPs/token analytic | analytic / counted | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name, model in _models(metrics).items():
        for variant, r in _variants(model).items():
            steps = " + ".join(f"{s:.1f}" for s in r["step_s"])
            lines.append(
                f"| {name} | {variant} | {r['params_total'] / 1e6:,.1f} M | {r['params_active'] / 1e6:,.1f} M | "
                f"{r['experts_per_token']:.2f} | {r['s_per_step']:.1f} ({steps}) | {r['peak_rss_gib']:.1f} | "
                f"{r['flops_per_token_analytic'] / 1e9:.3f} G | {r['flops_analytic_over_counted']:.6f} | "
                f"{r['rouge1']:.3f} | {r['rouge2']:.3f} | {r['rougeL']:.3f} | {r['rougeLsum']:.3f} |"
            )
    return "\n".join(lines)


def gpu_cost_rows(metrics: dict, steps: int, seeds: int = SEEDS) -> list[dict]:
    """Per model and SparTMoE variant: training FLOPs of one preset run (`steps` steps of one step's FLOPs on the
    smoke's batch, counted where the smoke ran the variant, analytic otherwise: study_train_flops; optimiser and
    evaluation left out), GPU-hours at UTILISATION of each GPU's bf16 peak, and, for the variants run, training
    memory (TRAIN_BYTES_PER_PARAM per parameter + the activations the step saved for backward); then per model
    the whole study: every variant x `seeds` seeds."""
    rows = []
    for name, model in _models(metrics).items():
        measured, per_step = _variants(model), model["study_train_flops_per_step"]
        for variant, flops in per_step.items():
            r = measured.get(variant)
            memory = r["params_total"] * TRAIN_BYTES_PER_PARAM / GIB + r["saved_activations_gib"] if r else None
            label = variant if r else f"{variant} (analytic)"
            rows.append(_cost_row(name, label, flops, flops * steps, memory))
        total = sum(per_step.values()) * steps * seeds
        rows.append(_cost_row(name, f"all {len(per_step)} variants x {seeds} seeds", None, total, None))
    return rows


def _cost_row(model: str, variant: str, per_step: float | None, flops: float, memory: float | None) -> dict:
    hours = {gpu: flops / (peak * UTILISATION) / 3600 for gpu, peak in GPUS.items()}
    return {"model": model, "variant": variant, "per_step": per_step, "flops": flops, "hours": hours, "memory": memory}


def gpu_cost_table(metrics: dict, steps: int) -> str:
    gpus = " | ".join(f"{gpu} h" for gpu in GPUS)
    head = f"| model | variant | train FLOPs / step | train FLOPs / run | {gpus} | memory GiB |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for row in gpu_cost_rows(metrics, steps):
        per_step = f"{row['per_step']:.3g}" if row["per_step"] is not None else ""
        memory = f"{row['memory']:.1f}" if row["memory"] is not None else ""
        hours = " | ".join(f"{h:.1f}" for h in row["hours"].values())
        lines.append(f"| {row['model']} | {row['variant']} | {per_step} | {row['flops']:.3g} | {hours} | {memory} |")
    return "\n".join(lines)


def smoke_markdown(metrics: dict, config: dict, meta: dict) -> str:
    steps = PRESET_COMMAND["summarization.train.steps"]
    models = _models(metrics)
    first = next(iter(models.values()))
    batch = f"{first['batch_rows']} x {first['source_len']} source + {first['target_len']} target tokens"
    stand_ins = "\n".join(f"- **{k}**: {v}" for k, v in meta["stand_ins"].items())
    gpus = ", ".join(f"{g} {p / 1e12:.0f} TFLOPS" for g, p in GPUS.items())
    return f"""# The paper preset at full size (`moelab paper-smoke`)

Written by `moelab paper-smoke` (`dvc repro paper/dvc.yaml`) with its numbers in `{config["out"]}`.

**Stand-ins** (see paper/README.md):
{stand_ins}

Machine: {meta["machine"]["cpu"]} ({meta["machine"]["usable_cpus"]} CPUs), {config["threads"]} torch threads per \
process, autocast {config["autocast"]}; load average {meta["loadavg_start"][0]:.1f} at the start and \
{meta["loadavg_end"][0]:.1f} at the end (other work on the machine slows every step). Whole run: \
{metrics["wall_s"] / 60:.1f} min, peak RSS {metrics["peak_rss_gib"]:.1f} GiB (the largest process).

## Per model x variant

One batch of {batch}, every position a token, and the preset's optimiser (AdamW lr 5e-5, weight decay 0).
s/step: the last step (in brackets: every step; the first also counts its FLOPs and first-touches the AdamW
moments). Peak RSS: the model's process while the variant ran (restore, reroute, steps, generation), the model
included; glibc's allocator returns freed tensors above 32 MiB, so earlier variants leave little behind.
FLOPs/token: forward, analytic at the first step's realised experts per token, over torch's FlopCounterMode
count of that forward. ROUGE: {SUMMARIES} test dialogues, greedy, at most {config["new_tokens"]} new tokens, fp32
as `moelab evaluate` runs; with random weights it only shows that generation and scoring run.

{smoke_table(metrics)}

## GPU cost of the preset

A SparTMoE run is {steps:,} steps of batch 4, each costed at the smoke's batch ({batch}; SAMSum's dialogues
are mostly shorter than the 512-token cap the stand-in fills, so for SAMSum these are upper bounds). FLOPs per
step: the first step's forward + backward as FlopCounterMode counted them; "(analytic)": a variant the smoke did
not run, 3 x the analytic forward count (the backward counted exactly 2 x the forward in every variant run) at
the realised experts per token of the variant run with the same gate. Optimiser and evaluation left out.
GPU-hours at {UTILISATION:.0%} of the dense bf16 peak ({gpus}). Memory: {TRAIN_BYTES_PER_PARAM} bytes per
parameter (fp32 weights and gradients, AdamW's two moments) + the activations the step saved for backward
(measured under bf16 autocast, its bf16 weight copies included), without the CUDA context and workspace.

{gpu_cost_table(metrics, steps)}
"""
