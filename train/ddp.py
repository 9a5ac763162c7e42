"""Data-parallel training under torchrun: the process's rank, the process group, and a weight check.

Named ``ddp`` rather than ``distributed``: ``python train/run.py`` puts train/ first on sys.path, where a
``distributed.py`` would shadow dask's top-level ``distributed`` package.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from mednext_fast.atomic import write_json


class Dist:
    """torchrun environment: rank, world size, and the process group (NCCL on GPUs, gloo on CPU)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1

    def init(self, device: torch.device) -> None:
        if self.active and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``net`` under DistributedDataParallel when there is more than one process."""
        if not self.active:
            return net
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def check_ddp_consistency(model, env: Dist, fold_dir: str) -> None:
    """Compare every rank's weights with rank 0's; record the largest difference in ddp_check.json."""
    dev = next(model.parameters()).device  # gloo gathers CPU tensors, NCCL device tensors
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).to(dev)
    gathered = [torch.zeros_like(flat) for _ in range(env.world)]
    dist.all_gather(gathered, flat)
    gathered = [g.cpu() for g in gathered]
    diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if env.main:
        write_json(os.path.join(fold_dir, "ddp_check.json"), dict(world_size=env.world, max_abs_diff=diff))
        if diff != 0:
            print(f"WARNING: DDP ranks ended with different weights (max abs diff {diff})", file=sys.stderr)
