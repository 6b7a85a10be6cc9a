"""Checkpoints in the NeMo 2 layout, written by every rank in parallel, resumable exactly.

``<run>/checkpoints/step=<N>/``

* ``weights/``: the model, written with ``torch.distributed.checkpoint`` (each rank writes its
  own shards, nothing is gathered) plus ``metadata.json`` (sharded backend ``torch_dist``) and
  ``common.pt``: the layout megatron-core's ``dist_checkpointing.load`` reads (NeMo 2's
  ``weights/``; see megatron/core/dist_checkpointing/serialization.py).
* ``context/``: ``model_config.json`` (the diffusers transformer config) and ``train_config.json``.
* ``optim/``: the AdamW state (DCP, sharded); ``train_state/``: step, LR schedule, sampler
  position, and each rank's RNG states.
* ``COMPLETE``: written by rank 0 only after every rank finished writing (barrier). A folder
  without it does not count; :func:`latest_complete` picks the newest one that has it.

Model tensors pass through :func:`to_checkpoint_keys` on the way out and
:func:`from_checkpoint_keys` on the way in (identity today: diffusers names); switching
``weights/`` to NeMo's DiT names is a change of those two functions only.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from cosmos_lib.sample_format import atomic_write_text

MEGATRON_METADATA = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}
COMPLETE = "COMPLETE"
STEP_RE = re.compile(r"^step=(\d+)$")


def to_checkpoint_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Model state dict (diffusers names) -> names stored in ``weights/``. Identity for now."""
    return state_dict


def from_checkpoint_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_checkpoint_keys`."""
    return state_dict


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step={step}"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def latest_complete(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and is_complete(p)]
    return max(found)[1] if found else None


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def save(run_dir: str | Path, step: int, *, model, optimizer, scheduler, sampler_state: dict,
         model_config: dict, train_config: dict) -> Path:
    """Write checkpoint ``step`` collectively (every rank calls this)."""
    out = step_dir(run_dir, step)
    rank = _rank()
    if rank == 0 and out.exists():  # a leftover from a killed run, or an overwrite
        shutil.rmtree(out)
    _barrier()
    dcp.save(to_checkpoint_keys(get_model_state_dict(model)), checkpoint_id=str(out / "weights"))
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(out / "optim"))
    state = out / "train_state"
    state.mkdir(parents=True, exist_ok=True)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, state / f"rng_rank{rank}.pt")
    if rank == 0:
        atomic_write_text(out / "weights" / "metadata.json", json.dumps(MEGATRON_METADATA))
        torch.save({"step": step, "format": "cosmos_lib.train", "key_names": "diffusers"}, out / "weights" / "common.pt")
        context = out / "context"
        context.mkdir(exist_ok=True)
        atomic_write_text(context / "model_config.json", json.dumps(model_config, indent=1))
        atomic_write_text(context / "train_config.json", json.dumps(train_config, indent=1, default=str))
        atomic_write_text(state / "trainer.json", json.dumps(
            {"step": step, "sampler": sampler_state, "scheduler": scheduler.state_dict()}, indent=1, default=str))
    _barrier()  # every rank has finished writing
    if rank == 0:
        atomic_write_text(out / COMPLETE, json.dumps({"step": step}) + "\n")
    _barrier()
    return out


def load(path: str | Path, *, model, optimizer=None, scheduler=None) -> dict:
    """Restore model (and optimizer, schedule, this rank's RNG) from a checkpoint; return trainer state."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    msd = to_checkpoint_keys(get_model_state_dict(model))
    dcp.load(msd, checkpoint_id=str(path / "weights"))
    set_model_state_dict(model, from_checkpoint_keys(msd))
    if optimizer is not None:
        osd = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(osd, checkpoint_id=str(path / "optim"))
        set_optimizer_state_dict(model, optimizer, osd["optimizer"])
    trainer = json.loads((path / "train_state" / "trainer.json").read_text())
    if scheduler is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    rng_file = path / "train_state" / f"rng_rank{_rank()}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return trainer


def load_full_model_state(path: str | Path, model: torch.nn.Module) -> None:
    """Load ``weights/`` into an ordinary (unsharded) model in this process, no process group."""
    msd = to_checkpoint_keys(model.state_dict())
    dcp.load(msd, checkpoint_id=str(Path(path) / "weights"), no_dist=True)
    model.load_state_dict(from_checkpoint_keys(msd))


def broadcast_full_state(model, full_state: dict | None) -> None:
    """Fill a sharded model from rank 0's full state dict (other ranks pass None)."""
    set_model_state_dict(model, full_state or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def read_model_config(path: str | Path) -> dict:
    return json.loads((Path(path) / "context" / "model_config.json").read_text())
