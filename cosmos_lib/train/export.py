"""Checkpoint -> diffusers ``transformer/`` folder (``CosmosTransformer3DModel.from_pretrained``).

The folder can replace ``transformer/`` of a Cosmos-1.0 diffusers model repo, or be passed as
``transformer=`` to ``CosmosTextToWorldPipeline`` / ``CosmosVideoToWorldPipeline``.
Runs in one process on CPU; reads the sharded, NeMo-keyed ``weights/`` with
``torch.distributed.checkpoint`` and converts the names back (:func:`checkpoint.read_full_state`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from . import checkpoint
from .model import build_model


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``step=<N>`` folder as given, or the latest complete checkpoint of a run folder."""
    path = Path(path)
    if checkpoint.is_complete(path):
        return path
    latest = checkpoint.latest_complete(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a complete checkpoint nor a run folder with one")
    return latest


def export(ckpt: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "bfloat16") -> Path:
    ckpt = resolve_checkpoint(ckpt)
    config = checkpoint.read_model_config(ckpt)
    model = build_model(config, "meta").to(getattr(torch, dtype))
    checkpoint.load_full_model_state(ckpt, model)  # read in `dtype` and assigned: one copy of the weights
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
