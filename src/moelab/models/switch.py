"""Switch Transformers (HF `SwitchTransformersForConditionalGeneration`) with moelab's MoE layer.

The HF model is built from a small from-scratch config (offline default) or loaded with
`from_pretrained` (hub name or local dir, safetensors only). Every `SwitchTransformersSparseMLP`
is then replaced by `MoESparseMLP`, a wrapper around moelab's `MoELayer` that copies the
checkpoint's expert weights (and, for the linear router, the router weights). Routing, capacity
and balancing then follow the run's MoEConfig; HF's own router losses are never added
(output_router_logits=False), so the training loss is seq2seq CE + model.balancing_loss().
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch
from torch import nn

from ..config import ConfigError, RunConfig
from ..moe import MoEConfig, MoELayer
from .blocks import MoEModelMixin
from .lm import IGNORE

# HF `dense_act_fn` -> moelab activation name
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "silu": "silu", "swish": "silu"}


class MoESparseMLP(nn.Module):
    """Drop-in for `SwitchTransformersSparseMLP`: forward(hidden [B, T, d]) -> hidden [B, T, d].

    `token_mask` ([B, T] bool, set by SwitchSeq2Seq before a forward) keeps padding out of routing,
    capacity, losses and statistics; it is ignored when its shape does not match the input.
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.moe = MoELayer(cfg)
        self.token_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.token_mask
        if mask is not None and mask.shape != hidden_states.shape[:2]:
            mask = None
        return self.moe(hidden_states, mask)

    @property
    def balancing_loss(self) -> torch.Tensor:
        return self.moe.balancing_loss


def moe_config_for(hf_config, moe: MoEConfig) -> MoEConfig:
    """The run's MoEConfig with the checkpoint's sizes and activation; E must match the checkpoint."""
    if moe.n_experts != hf_config.num_experts:
        raise ConfigError(f"model preset n_experts = {moe.n_experts} but the Switch checkpoint has "
                          f"{hf_config.num_experts} experts per MoE layer: set n_experts: {hf_config.num_experts}")
    act = HF_ACTIVATIONS.get(hf_config.dense_act_fn)
    if act is None:
        raise ConfigError(f"Switch dense_act_fn {hf_config.dense_act_fn!r} is not supported; "
                          f"allowed: {', '.join(HF_ACTIVATIONS)}")
    return dataclasses.replace(moe, d_model=hf_config.d_model, d_ff=hf_config.d_ff, activation=act)


@torch.no_grad()
def wrap_sparse_mlp(sparse, cfg: MoEConfig) -> MoESparseMLP:
    """A MoESparseMLP holding the expert (and linear-router) weights of an HF SparseMLP."""
    wrapper = MoESparseMLP(cfg)
    experts = wrapper.moe.experts
    for e in range(cfg.n_experts):
        hf_expert = sparse.experts[f"expert_{e}"]
        experts.w_in[e].copy_(hf_expert.wi.weight.T)     # wi.weight: [f, d] -> w_in[e]: [d, f]
        experts.w_out[e].copy_(hf_expert.wo.weight.T)    # wo.weight: [d, f] -> w_out[e]: [f, d]
    classifier = sparse.router.classifier
    if cfg.router == "linear":
        if classifier.bias is not None:
            raise ConfigError("the Switch checkpoint's router has a bias (router_bias: true); "
                              "moelab's linear router has none")
        wrapper.moe.router.proj.weight.copy_(classifier.weight)   # [E, d]
    return wrapper.to(classifier.weight.dtype)


def swap_sparse_mlps(hf_model: nn.Module, moe: MoEConfig) -> int:
    """Replace every SwitchTransformersSparseMLP of `hf_model` in place. Returns how many."""
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP
    cfg = moe_config_for(hf_model.config, moe)
    targets = [(name, m) for name, m in hf_model.named_modules() if isinstance(m, SwitchTransformersSparseMLP)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(hf_model.get_submodule(parent_name), child, wrap_sparse_mlp(module, cfg))
    return len(targets)


def scratch_config(run: RunConfig, vocab_size: int, pad_id: int, eos_id: int):
    """A from-scratch SwitchTransformersConfig sized by the model preset (dense: no sparse layers)."""
    from transformers import SwitchTransformersConfig
    p = run.preset
    moe_every = p.moe_every if run.moe is not None else 0
    n_sparse = p.n_layers // moe_every if moe_every > 0 else 0
    cfg = SwitchTransformersConfig(
        vocab_size=vocab_size, d_model=p.d_model, d_kv=p.d_model // p.n_heads, num_heads=p.n_heads,
        d_ff=p.d_ff if run.moe is not None else run.dense_d_ff, num_layers=p.n_layers,
        num_decoder_layers=p.n_layers, num_sparse_encoder_layers=n_sparse, num_sparse_decoder_layers=n_sparse,
        num_experts=p.n_experts, dropout_rate=p.dropout, dense_act_fn=p.activation,
        pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id, output_router_logits=False)
    # HF derives sparse_step = n_layers // n_sparse and treats step 1 as "all sparse" (also when n_sparse = 0);
    # set it directly: MoE in every moe_every-th layer, none when 0.
    cfg.encoder_sparse_step = cfg.decoder_sparse_step = moe_every
    return cfg


@contextmanager
def _no_hf_progress_bars():
    """transformers 5 draws a "Loading weights" bar on stderr in from_pretrained; without this, a stage
    that then fails (e.g. the n_experts ConfigError) prints that bar before its one error line."""
    from transformers.utils import logging as hf_logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_hf(run: RunConfig, vocab_size: int, pad_id: int, eos_id: int):
    """The HF model: from_pretrained(preset.pretrained) (safetensors) or from a scratch config."""
    from transformers import SwitchTransformersForConditionalGeneration as Switch
    if run.preset.pretrained:
        with _no_hf_progress_bars():
            model = Switch.from_pretrained(run.preset.pretrained, use_safetensors=True)
    else:
        torch.manual_seed(run.seed)
        model = Switch(scratch_config(run, vocab_size, pad_id, eos_id))
    model.config.output_router_logits = False
    return model


class SwitchSeq2Seq(nn.Module, MoEModelMixin):
    """HF Switch Transformer whose sparse MLPs are moelab MoE layers.

    batch: input_ids [B, S], attention_mask [B, S], labels [B, L] (IGNORE = padding).
    """

    def __init__(self, run: RunConfig, vocab_size: int, pad_id: int = 0, eos_id: int = 1):
        super().__init__()
        self.hf = load_hf(run, vocab_size, pad_id, eos_id)
        self.n_swapped = swap_sparse_mlps(self.hf, run.moe) if run.moe is not None else 0

    def _wrappers(self, stack: nn.Module) -> list[MoESparseMLP]:
        return [m for m in stack.modules() if isinstance(m, MoESparseMLP)]

    def set_token_masks(self, encoder_mask: torch.Tensor | None, decoder_mask: torch.Tensor | None) -> None:
        for m in self._wrappers(self.hf.encoder):
            m.token_mask = encoder_mask
        for m in self._wrappers(self.hf.decoder):
            m.token_mask = decoder_mask

    def forward(self, input_ids, attention_mask=None, labels=None, decoder_input_ids=None):
        """Returns lm logits [B, L, V]; padding (attention_mask False / labels IGNORE) is not routed."""
        enc_mask = attention_mask.bool() if attention_mask is not None else None
        dec_mask = labels != IGNORE if labels is not None else None
        self.set_token_masks(enc_mask, dec_mask)
        try:
            if decoder_input_ids is None:
                decoder_input_ids = self.hf._shift_right(labels)      # [B, L]
            out = self.hf(input_ids=input_ids, attention_mask=attention_mask,
                          decoder_input_ids=decoder_input_ids, output_router_logits=False, use_cache=False)
        finally:
            self.set_token_masks(None, None)
        return out.logits

    def loss(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict]:
        """Mean CE over non-padding target tokens; the balancing losses are model.balancing_loss()."""
        labels = batch["labels"]
        logits = (forward or self)(batch["input_ids"], batch["attention_mask"], labels)   # [B, L, V]
        ce = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                         ignore_index=IGNORE)
        return ce, {"tokens": int((labels != IGNORE).sum())}

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int, num_beams: int = 1,
                 no_repeat_ngram_size: int = 0) -> torch.Tensor:
        """Greedy / beam-search summaries [B, <= max_new_tokens + 1] (starting with decoder_start)."""
        self.set_token_masks(attention_mask.bool(), None)
        try:
            return self.hf.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                    num_beams=num_beams, max_new_tokens=max_new_tokens,
                                    no_repeat_ngram_size=no_repeat_ngram_size,
                                    output_router_logits=False)
        finally:
            self.set_token_masks(None, None)
