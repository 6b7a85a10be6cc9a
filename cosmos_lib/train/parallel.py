"""Process group and FSDP2 sharding (torchtitan's ``parallelize`` step for the Cosmos DiT).

Every rank holds fp32 master weights and optimizer state for its shard only; ``fully_shard`` is
applied per transformer block and then to the root (patch embedding, time embedding, positional
embedding, final layer), with bf16 parameters for compute and fp32 gradient reduction on GPU.
"""

from __future__ import annotations

import os
import socket
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group (nccl on GPU, gloo on CPU), or make a group of one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no GPU is visible")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30),
                                device_id=dev if device == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def parallelize(model: torch.nn.Module, *, param_dtype: torch.dtype, activation_checkpointing: bool,
                compile_blocks: bool) -> torch.nn.Module:
    """Activation checkpointing, optional compile, then FSDP2 per block and at the root.

    The order is torchtitan's (``parallelize_llama``): each block is wrapped for activation
    checkpointing (non-reentrant), then compiled, then sharded, so FSDP's all-gather and
    mixed-precision casts stay outside the recomputed region. The wrapper's name
    (``_checkpoint_wrapped_module``) is dropped by ``torch.distributed.checkpoint.state_dict``,
    so checkpoints keep the plain diffusers names.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    for i, block in enumerate(model.transformer_blocks):
        if activation_checkpointing:
            block = checkpoint_wrapper(block, preserve_rng_state=False)
        if compile_blocks:
            block.compile()  # in place: no "_orig_mod" in parameter names
        model.transformer_blocks[i] = block
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = list(model.transformer_blocks)
    for i, block in enumerate(blocks):
        # the last block's parameters are needed right away by backward: keep them gathered
        fully_shard(block, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mp_policy=mp)
    return model
