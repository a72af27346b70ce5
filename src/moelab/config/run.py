"""What one run is built from, fully resolved: the model's config (sizes, MoE layer, init) and the
run's (task, variant, seed, data, training, evaluation). Plain dataclasses: resolution from params.yaml
lives above the tasks (moelab/resolve.py), and nothing below reads params.yaml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .schema import DataParams, EvalParams, InitParams, TrainConfig

if TYPE_CHECKING:  # a type only: config is a leaf and imports nothing of the layer it configures
    from ..moe import MoEConfig


@dataclass(frozen=True)
class ModelConfig:
    """What a model is built from: sizes, the MoE layer (None: dense baseline), initialisation."""

    d_model: int
    n_layers: int
    n_heads: int
    dense_d_ff: int  # width of every dense FFN (non-MoE blocks; the dense baseline)
    moe: MoEConfig | None  # the MoE FFN (the task derives causal variants from it)
    moe_every: int = 1  # MoE FFN in blocks moe_every-1, 2*moe_every-1, ... (0: none)
    dropout: float = 0.0
    activation: str = "gelu"
    pretrained: str | None = None
    init: InitParams = dataclasses.field(default_factory=InitParams)
    router_from_checkpoint: bool = True  # pretrained: copy the checkpoint's linear router (False: moelab's init)

    def moe_block_indices(self) -> list[int]:
        if self.moe is None or self.moe_every <= 0:
            return []
        return [i for i in range(self.n_layers) if (i + 1) % self.moe_every == 0]


@dataclass(frozen=True)
class RunConfig:
    """Everything one training/evaluation run needs, fully resolved."""

    task: str
    name: str  # variant name, e.g. attention-sparsemax-e16, dense-e8, or base-e8 (a pretraining run)
    gating: str  # router-gate, e.g. attention-sparsemax, or dense
    preset: str  # model-size preset name (for dense: the preset it matches)
    seed: int
    model: ModelConfig
    data: DataParams
    train: TrainConfig
    evaluate: EvalParams
    # the shared base this run fine-tunes from (a pretraining run's directory): its weights except the
    # routing, which starts fresh (SparTMoE's protocol); None: trained from its own initialisation
    init_from: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
