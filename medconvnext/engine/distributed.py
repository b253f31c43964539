"""DDP through torchrun: process-group setup from the environment, and the few collectives the trainer needs.

``torchrun --nproc_per_node N -m medconvnext train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; without them everything here is a single-process no-op.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """WORLD_SIZE from torchrun's environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str) -> None:
    """Join the process group when launched by torchrun: NCCL for CUDA tensors, gloo for CPU ones.

    On CUDA both backends are registered: the small collectives on CPU values (summed losses, gathered case
    ids) would otherwise fail under NCCL alone ("no backend type associated with device type cpu").
    """
    if env_world_size() <= 1 or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Only rank 0 writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_across_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not is_distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank.

    On CPU (no SyncBatchNorm) each rank's running statistics drift apart during an epoch; evaluating
    with rank 0's, which is what gets saved, keeps the gathered validation equal to the checkpoint's.
    """
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
