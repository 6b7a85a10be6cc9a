"""Throughput, MFU, memory, and the metric sinks (log file on rank 0, optional Weights & Biases).

MFU = achieved model FLOP/s / peak. Model FLOPs per sample are counted once with
``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy of the model (forward of one
sample at the dataset's latent shape), times 3 for forward + backward (activation
recomputation is not counted, as usual for MFU).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger("cosmos_lib.train")

#: dense bf16 peak FLOP/s by device name fragment (vendor data sheets)
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def forward_flop_counter(model_config: dict, latent_shape: tuple[int, ...], text_len: int = 512):
    """The model (on the meta device) and a FlopCounterMode that counted one sample's forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from .model import build_model

    model = build_model(model_config, "meta")
    c, t, h, w = latent_shape
    extra = model_config["in_channels"] - c
    with torch.device("meta"):
        x = torch.empty(1, c, t, h, w)
        cond = torch.empty(1, extra, t, h, w) if extra else None
        text = torch.empty(1, text_len, model_config.get("text_embed_dim", 1024))
        pad = torch.empty(1, 1, h, w)
        timestep = torch.empty(1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(hidden_states=x, timestep=timestep, encoder_hidden_states=text, fps=24.0,
              condition_mask=cond, padding_mask=pad, return_dict=False)
    return model, counter


def train_flops_per_sample(model_config: dict, latent_shape: tuple[int, ...], text_len: int = 512) -> float:
    """Model FLOPs of one training sample (forward + backward = 3 x forward), counted on meta."""
    _, counter = forward_flop_counter(model_config, latent_shape, text_len)
    return 3.0 * counter.get_total_flops()


class MetricLogger:
    """Rank 0 writes each logged step to the log (stdout) and ``metrics.jsonl``, and to W&B if on."""

    def __init__(self, run_dir: Path, *, enabled: bool, wandb_cfg, train_config: dict) -> None:
        self.enabled = enabled
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if enabled and wandb_cfg.project:
            self.wandb = _start_wandb(wandb_cfg, train_config, run_dir)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        log.info("step %d %s", step, text)
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(cfg, train_config: dict, run_dir: Path):
    """Weights & Biases, imported lazily. Offline unless an API key (or WANDB_MODE) says otherwise."""
    try:
        import wandb
    except ImportError as exc:
        raise RuntimeError("train.wandb.project is set but the wandb package is not installed: "
                           "pip install wandb, or leave train.wandb.project empty") from exc
    mode = cfg.mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", cfg.project),
        entity=cfg.entity or os.environ.get("WANDB_ENTITY") or None,
        name=cfg.run_name or os.environ.get("WANDB_NAME") or None,
        dir=os.environ.get("WANDB_DIR", str(run_dir)),
        mode=mode,
        config=train_config,  # the train block: paths and hyper-parameters, no secrets
        resume="allow",
        id=os.environ.get("WANDB_RUN_ID") or None,
    )


def memory_stats(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {
        "gpu_mem_alloc_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "gpu_mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
    }
