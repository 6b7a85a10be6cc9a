"""The ``train:`` block of the workflow config as a typed object.

Defaults live in config/schemas/train.schema.yaml (Snakemake fills them); the same defaults are
repeated here only so that the library can be used without the workflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .objective import EDMConfig


@dataclass
class WandbConfig:
    project: str = ""
    run_name: str = ""
    entity: str = ""
    mode: str = ""  # "", online, offline, disabled; "" = offline without WANDB_API_KEY


@dataclass
class TrainConfig:
    task: str = "text2world"
    model: str = "nvidia/Cosmos-1.0-Diffusion-7B-Text2World"
    init_from: str = ""  # a NeMo checkpoint folder (torch_dist or zarr) to start from instead of `model`
    run_name: str = "cosmos"
    seed: int = 1234
    max_steps: int = 1000
    lr: float = 1e-6
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float = 1.0
    micro_batch_size: int = 1
    global_batch_size: int = 8
    save_every: int = 500
    log_every: int = 1
    activation_checkpointing: bool = True
    compile: bool = False
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), bf16, fp32
    device: str = "auto"  # auto, cuda, cpu
    num_workers: int = 4
    nproc_per_node: int = 8
    nnodes: int = 1
    objective: EDMConfig = field(default_factory=EDMConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    resources: dict = field(default_factory=dict)  # used by the Snakemake rule only

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TrainConfig":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown train keys {sorted(unknown)}")
        if "objective" in d:
            d["objective"] = EDMConfig.from_dict(d["objective"])
        if "wandb" in d:
            d["wandb"] = WandbConfig(**(d["wandb"] or {}))
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        cfg = cls(**d)
        cfg.check()
        return cfg

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        if self.task not in ("text2world", "video2world"):
            raise ValueError(f"train.task must be text2world or video2world, got {self.task!r}")
        for name in ("max_steps", "micro_batch_size", "global_batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps so that global = micro x data-parallel x accumulation."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size={self.global_batch_size} must be a multiple of "
                f"micro_batch_size ({self.micro_batch_size}) x data-parallel ranks ({world_size}) = {per_step}"
            )
        return self.global_batch_size // per_step
