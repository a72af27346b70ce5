"""Switch Transformers (HF `SwitchTransformersForConditionalGeneration`) with moelab's MoE layer.

The HF model is built from a small from-scratch config (offline default) or loaded with
`from_pretrained` (hub name or local dir, safetensors only). Every `SwitchTransformersSparseMLP`
is then replaced by `MoESparseMLP`, a wrapper around moelab's `MoELayer` that copies the
checkpoint's expert weights (and, for the linear router, the router weights). Routing, capacity
and balancing then follow the run's MoEConfig; HF's own router losses are never added
(output_router_logits=False), so the training loss is seq2seq CE + model.balancing_loss().
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..moe import MoEConfig, MoELayer
from ..moe.init import InitConfig, switch_init_
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


def stack_moe_configs(model: ModelConfig, max_target_len: int, hf_config=None) -> tuple[MoEConfig, MoEConfig]:
    """(encoder, decoder) MoE configs. The encoder is bidirectional; the decoder is causal (capacity
    from the fixed target length) and routes by token choice: a selection rule that is not causal
    (expert choice) is used in the encoder only, the decoder keeps the same k with token choice."""
    moe = model.moe
    if hf_config is not None:
        moe = moe_config_for(hf_config, moe)
    decoder = moe.replace(causal=True, group_len=max_target_len)
    from ..moe.selection import SELECTIONS

    if not SELECTIONS.get(moe.selection).is_causal(decoder):
        decoder = decoder.replace(selection="token_choice")
    return moe, decoder


def moe_config_for(hf_config, moe: MoEConfig) -> MoEConfig:
    """The run's MoEConfig with the checkpoint's sizes and activation; E, the expert type and shape must
    match the checkpoint (its experts are copied in)."""
    if moe.n_experts != hf_config.num_experts:
        raise ConfigError(
            f"model preset n_experts = {moe.n_experts} but the Switch checkpoint has "
            f"{hf_config.num_experts} experts per MoE layer: set n_experts: {hf_config.num_experts}"
        )
    if (moe.expert, moe.expert_granularity, moe.n_shared) != ("mlp", 1, 0):
        raise ConfigError(
            f"a Switch checkpoint holds {hf_config.num_experts} mlp experts of width d_ff and no shared one; "
            f"moe.expert = {moe.expert!r}, expert_granularity = {moe.expert_granularity}, n_shared = "
            f"{moe.n_shared} would not be the checkpoint's: set expert: mlp, expert_granularity: 1, n_shared: 0"
        )
    return moe.replace(d_model=hf_config.d_model, d_ff=hf_config.d_ff, activation=hf_activation(hf_config))


@torch.no_grad()
def wrap_sparse_mlp(sparse, cfg: MoEConfig, router_init: InitConfig | None = None) -> MoESparseMLP:
    """A MoESparseMLP holding the expert weights of an HF SparseMLP and, with router_init None, its
    (linear) router weights; with router_init given, a fresh router initialised with it."""
    wrapper = MoESparseMLP(cfg)
    layer = wrapper.moe
    for e in range(cfg.n_experts):
        hf_expert = sparse.experts[f"expert_{e}"]
        layer.experts.w_in[e].copy_(hf_expert.wi.weight.T)  # wi.weight: [f, d] -> w_in[e]: [d, f]
        layer.experts.w_out[e].copy_(hf_expert.wo.weight.T)  # wo.weight: [d, f] -> w_out[e]: [f, d]
    classifier = sparse.router.classifier
    if router_init is not None:
        layer.router.reset_parameters(router_init)
    elif cfg.router != "linear":
        raise ConfigError(f"the Switch checkpoint has no weights for a {cfg.router!r} router: it needs an init")
    elif classifier.bias is not None:
        raise ConfigError(
            "the Switch checkpoint's router has a bias (router_bias: true); moelab's linear router has none"
        )
    else:
        layer.router.proj.weight.copy_(classifier.weight)  # [E, d]
    return wrapper.to(classifier.weight.dtype)


class DenseFromExperts(nn.Module):
    """The dense baseline of a pretrained Switch checkpoint: each sparse MLP becomes one dense FFN of
    width k * d_ff (the FFN FLOPs of top-k routing), made of the checkpoint's first k experts side by
    side with the output scaled by 1/k: act(x [W_1 .. W_k]) [V_1 .. V_k]^T / k = mean_j expert_j(x).
    No router. It starts as the uniform average of k pretrained experts applied to every token, a
    function the checkpoint never computed (each expert was trained on the tokens routed to it), so it
    is a "same weights, no routing" ablation, not a dense model pretrained as such (README)."""

    def __init__(self, sparse, k: int, activation: str):
        super().__init__()
        from .blocks import DenseFFN

        experts = [sparse.experts[f"expert_{e}"] for e in range(k)]
        d, f = experts[0].wi.weight.shape[1], experts[0].wi.weight.shape[0]
        self.ffn = DenseFFN(d, k * f, activation)
        with torch.no_grad():
            self.ffn.w_in.weight.copy_(torch.cat([x.wi.weight for x in experts], 0))  # [k f, d]
            self.ffn.w_out.weight.copy_(torch.cat([x.wo.weight for x in experts], 1) / k)  # [d, k f]
        self.to(experts[0].wi.weight.dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.ffn(hidden_states)


def experts_in_dense(model: ModelConfig, hf_config) -> int:
    """k of the dense baseline of a checkpoint: its FFN width model.dense_d_ff (dense.top_k x the
    preset's d_ff) must be k whole experts of the checkpoint, 1 <= k <= num_experts."""
    k, rest = divmod(model.dense_d_ff, hf_config.d_ff)
    if rest or not 1 <= k <= hf_config.num_experts:
        raise ConfigError(
            f"the dense baseline of the Switch checkpoint needs an FFN width of k x its expert d_ff "
            f"({hf_config.d_ff}), 1 <= k <= {hf_config.num_experts}; dense.top_k x the preset's d_ff is "
            f"{model.dense_d_ff}: set the preset's d_ff: {hf_config.d_ff}"
        )
    return k


def hf_activation(hf_config) -> str:
    """The moelab name of the checkpoint's FFN activation (`dense_act_fn`)."""
    act = HF_ACTIVATIONS.get(hf_config.dense_act_fn)
    if act is None:
        raise ConfigError(
            f"Switch dense_act_fn {hf_config.dense_act_fn!r} is not supported; allowed: {', '.join(HF_ACTIVATIONS)}"
        )
    return act


def _sparse_mlps(hf_model: nn.Module) -> list[tuple[str, nn.Module]]:
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    return [(name, m) for name, m in hf_model.named_modules() if isinstance(m, SwitchTransformersSparseMLP)]


def _replace(hf_model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(hf_model.get_submodule(parent_name), child, module)


def swap_sparse_mlps(
    hf_model: nn.Module,
    encoder: MoEConfig,
    decoder: MoEConfig,
    init: InitConfig,
    pretrained: bool,
    router_from_checkpoint: bool = True,
) -> int:
    """Replace every SwitchTransformersSparseMLP of `hf_model` in place (encoder / decoder configs).
    Pretrained: keep the checkpoint's experts, and its router when linear and router_from_checkpoint
    (otherwise a fresh router with moelab's init). From scratch: fresh layers with moelab's init.
    Returns how many were replaced."""
    targets = _sparse_mlps(hf_model)
    for name, module in targets:
        cfg = decoder if name.startswith("decoder.") else encoder
        if pretrained:
            keep = router_from_checkpoint and cfg.router == "linear"
            new = wrap_sparse_mlp(module, cfg, None if keep else init)
        else:
            new = MoESparseMLP(cfg)
            new.moe.reset_parameters(init)
        _replace(hf_model, name, new)
    return len(targets)


def scratch_config(model: ModelConfig, vocab_size: int, pad_id: int, eos_id: int):
    """A from-scratch SwitchTransformersConfig sized by the model config (dense: no sparse layers)."""
    from transformers import SwitchTransformersConfig

    moe_every = model.moe_every if model.moe is not None else 0
    n_sparse = model.n_layers // moe_every if moe_every > 0 else 0
    cfg = SwitchTransformersConfig(
        vocab_size=vocab_size,
        d_model=model.d_model,
        d_kv=model.d_model // model.n_heads,
        num_heads=model.n_heads,
        d_ff=model.moe.d_ff if model.moe is not None else model.dense_d_ff,
        num_layers=model.n_layers,
        num_decoder_layers=model.n_layers,
        num_sparse_encoder_layers=n_sparse,
        num_sparse_decoder_layers=n_sparse,
        num_experts=model.moe.n_experts if model.moe is not None else 1,
        dropout_rate=model.dropout,
        dense_act_fn=model.activation,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        decoder_start_token_id=pad_id,
        output_router_logits=False,
    )
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


def load_hf(model: ModelConfig, vocab_size: int, pad_id: int, eos_id: int):
    """The HF model: from_pretrained(model.pretrained) (safetensors) or from a scratch config."""
    from transformers import SwitchTransformersForConditionalGeneration as Switch

    if model.pretrained:
        with _no_hf_progress_bars():
            hf = Switch.from_pretrained(model.pretrained, use_safetensors=True)
    else:
        hf = Switch(scratch_config(model, vocab_size, pad_id, eos_id))
        _init_dense_ffns(hf, model.init)
    hf.config.output_router_logits = False
    return hf


@torch.no_grad()
def _init_dense_ffns(hf_model: nn.Module, init: InitConfig) -> None:
    """From scratch, HF's dense FFNs get moelab's FFN init (the experts get it in MoELayer), so a
    dense FFN and an expert of the same width start alike."""
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersDenseActDense

    for m in hf_model.modules():
        if isinstance(m, SwitchTransformersDenseActDense):
            switch_init_(m.wi.weight, init.ffn_scale, m.wi.weight.shape[1])
            switch_init_(m.wo.weight, init.ffn_scale, m.wo.weight.shape[1])


class SwitchSeq2Seq(nn.Module, MoEModelMixin):
    """HF Switch Transformer whose sparse MLPs are moelab MoE layers.

    batch: input_ids [B, S], attention_mask [B, S], labels [B, L] (IGNORE = padding).
    """

    def __init__(
        self,
        model: ModelConfig,
        vocab_size: int,
        pad_id: int = 0,
        eos_id: int = 1,
        max_target_len: int = 32,
    ):
        super().__init__()
        self.hf = load_hf(model, vocab_size, pad_id, eos_id)
        self.use_cache = True
        self.n_swapped = 0
        if model.moe is not None:
            encoder, decoder = stack_moe_configs(model, max_target_len, self.hf.config if model.pretrained else None)
            self.n_swapped = swap_sparse_mlps(
                self.hf, encoder, decoder, model.init, bool(model.pretrained), model.router_from_checkpoint
            )
            # a KV cache routes one new token at a time; with capacity, a token's slot depends on the
            # earlier tokens of its sequence, so generation then re-runs the whole prefix each step
            self.use_cache = decoder.capacity_factor <= 0
        elif model.pretrained:  # the dense baseline: each sparse MLP of the checkpoint becomes a dense FFN
            k, act = experts_in_dense(model, self.hf.config), hf_activation(self.hf.config)
            for name, module in _sparse_mlps(self.hf):
                _replace(self.hf, name, DenseFromExperts(module, k, act))

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
                decoder_input_ids = self.hf._shift_right(labels)  # [B, L]
            out = self.hf(
                input_ids=input_ids,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                output_router_logits=False,
                use_cache=False,
            )
        finally:
            self.set_token_masks(None, None)
        return out.logits

    def loss(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict]:
        """Mean CE over non-padding target tokens; the balancing losses are model.balancing_loss()."""
        labels = batch["labels"]
        logits = (forward or self)(batch["input_ids"], batch["attention_mask"], labels)  # [B, L, V]
        ce = nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
        )
        return ce, {"tokens": int((labels != IGNORE).sum())}

    @torch.no_grad()
    def generate(
        self,
        input_ids,
        attention_mask,
        max_new_tokens: int,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Greedy / beam-search summaries [B, <= max_new_tokens + 1] (starting with decoder_start)."""
        self.set_token_masks(attention_mask.bool(), None)
        try:
            return self.hf.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                no_repeat_ngram_size=no_repeat_ngram_size,
                length_penalty=length_penalty,
                output_router_logits=False,
                use_cache=self.use_cache,
            )
        finally:
            self.set_token_masks(None, None)
