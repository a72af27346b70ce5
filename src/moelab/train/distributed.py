"""Data-parallel setup under torchrun (DDP, gloo on CPU, NCCL on GPU); one process when absent."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class DistEnv:
    """torchrun environment (RANK, WORLD_SIZE); a single process when absent."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
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
    return {k: v[env.rank :: env.world] for k, v in batch.items()} if env.world > 1 else batch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def wrap_ddp(model, env: DistEnv):
    if env.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # MoE: an expert that got no token this step has no gradient on this rank.
    # broadcast_buffers=False: the only buffers are the selection bias (kept identical on every rank by
    # its all-reduced update) and its per-rank load counts, which rank 0 must not overwrite between the
    # micro-batches of a gradient-accumulation step.
    return DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)


def sum_over_ranks(values: list[float], env: DistEnv) -> list[float]:
    if env.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def mean_over_ranks(values: list[float], env: DistEnv) -> list[float]:
    return [v / env.world for v in sum_over_ranks(values, env)]
