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

``weights/`` uses NeMo's key names (``module.decoder.layers.<name>`` stacked over layers, fused
QKV, fused AdaLN-LoRA; :mod:`cosmos_lib.nemo_layout`), so NeMo's Cosmos tools and megatron-core
read it as a NeMo DiT checkpoint. Model tensors pass through :func:`to_checkpoint_keys`
(:func:`cosmos_lib.nemo_checkpoint.to_nemo_dcp`: each rank contributes only the rows it holds,
fused heads built from its local rows) on the way out and :func:`from_checkpoint_keys` on the way
in. That needs whole heads on every rank: :func:`check_world_size` refuses, before training, a
world size that does not divide the head count. ``common.pt`` records ``"key_names": "nemo"``;
checkpoints written before (``"diffusers"``, or no such key) still resume and export.
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

from cosmos_lib import nemo_checkpoint
from cosmos_lib.nemo_convert import heads_divide_evenly, is_stacked, nemo_to_diffusers
from cosmos_lib.nemo_layout import LAYER_PREFIX, NEMO_PREFIX
from cosmos_lib.sample_format import atomic_write_text

MEGATRON_METADATA = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}
COMPLETE = "COMPLETE"
STEP_RE = re.compile(r"^step=(\d+)$")


KEY_NAMES = "nemo"  # what this version writes; "diffusers" = checkpoints written before NeMo keys


def to_checkpoint_keys(state_dict: dict[str, Any], key_names: str = KEY_NAMES) -> dict[str, Any]:
    """Model state dict (diffusers names; plain tensors or FSDP2 DTensors) -> the state dict that
    ``dcp.save`` / ``dcp.load`` use for ``weights/``: NeMo-keyed pieces of this rank's shards."""
    if key_names == "diffusers":
        return state_dict
    return nemo_checkpoint.to_nemo_dcp(state_dict)


def from_checkpoint_keys(state_dict: dict[str, Any], key_names: str = KEY_NAMES) -> dict[str, Any]:
    """Inverse of :func:`to_checkpoint_keys` (after ``dcp.load`` filled it): diffusers names,
    tensors with the placements of the model's own."""
    if key_names == "diffusers":
        return state_dict
    return nemo_checkpoint.from_nemo_dcp(state_dict)


def check_world_size(model_config: dict, world_size: int) -> None:
    """NeMo's fused QKV / KV rows interleave heads, so each FSDP rank must hold whole heads of
    every attention projection (``Shard(0)`` over ``world_size`` ranks); refuse anything else
    before any GPU time is spent."""
    heads, head_dim = int(model_config["num_attention_heads"]), int(model_config["attention_head_dim"])
    if not heads_divide_evenly(heads * head_dim, head_dim, world_size):
        raise ValueError(
            f"the model has {heads} attention heads, which do not divide over {world_size} training processes "
            f"(world size = nproc_per_node x nnodes): checkpoints use NeMo's fused-QKV layout, which needs whole "
            f"heads on every rank. Use a world size that divides {heads}.")


def key_names(path: str | Path) -> str:
    """``"nemo"`` or ``"diffusers"``: the tensor names in ``<checkpoint>/weights`` (from ``common.pt``)."""
    common = Path(path) / "weights" / "common.pt"
    if not common.is_file():
        raise FileNotFoundError(f"{common}: missing; not a checkpoint written by cosmos_lib.train")
    names = torch.load(common, weights_only=True).get("key_names", "diffusers")
    if names not in ("nemo", "diffusers"):
        raise ValueError(f"{common}: unknown key_names {names!r}")
    return names


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
    dcp.save(dict(to_checkpoint_keys(get_model_state_dict(model), KEY_NAMES)), checkpoint_id=str(out / "weights"))
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(out / "optim"))
    state = out / "train_state"
    state.mkdir(parents=True, exist_ok=True)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, state / f"rng_rank{rank}.pt")
    if rank == 0:
        atomic_write_text(out / "weights" / "metadata.json", json.dumps(MEGATRON_METADATA))
        torch.save({"step": step, "format": "cosmos_lib.train", "key_names": KEY_NAMES}, out / "weights" / "common.pt")
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
    names = key_names(path)
    msd = to_checkpoint_keys(get_model_state_dict(model), names)
    dcp.load(msd, checkpoint_id=str(path / "weights"))
    set_model_state_dict(model, from_checkpoint_keys(msd, names))
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


def read_full_state(path: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The whole model of checkpoint ``path`` as a diffusers state dict, read in this process
    (with or without a process group; nothing is communicated). ``dtype`` casts while reading
    (default: as stored, fp32), so a bf16 export holds one bf16 copy plus the split heads."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    weights = Path(path) / "weights"
    names = key_names(path)
    reader = dcp.FileSystemReader(str(weights))
    meta = reader.read_metadata().state_dict_metadata
    tensors = {k: torch.empty(tuple(md.size), dtype=dtype or md.properties.dtype)
               for k, md in meta.items() if isinstance(md, TensorStorageMetadata)}
    dcp.load(tensors, storage_reader=reader, no_dist=True)
    if names == "diffusers":
        return tensors
    for key in [k for k in tensors if is_stacked({k: None})]:  # one layer at a time, freeing the stack
        stacked = tensors.pop(key)
        rest = key[len(NEMO_PREFIX + LAYER_PREFIX):]
        tensors.update({f"{NEMO_PREFIX}{LAYER_PREFIX}{i}.{rest}": stacked[i].clone() for i in range(stacked.shape[0])})
        del stacked
    try:
        sd = nemo_to_diffusers(tensors)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{weights}: {err}") from err
    del tensors
    # every tensor its own storage (split parts may be views of one fused tensor): safetensors
    # refuses tensors that share memory, and a model assigned these must not alias parameters
    return {k: v if v.untyped_storage().nbytes() == v.numel() * v.element_size() else v.clone()
            for k, v in sd.items()}


def load_full_model_state(path: str | Path, model: torch.nn.Module) -> None:
    """Load ``weights/`` into an ordinary (unsharded) model in this process, no process group
    needed. A model on the meta device gets the loaded tensors assigned (no second copy)."""
    first = next(model.parameters())
    sd = read_full_state(path, dtype=first.dtype)
    model.load_state_dict(sd, strict=True, assign=first.is_meta)


def broadcast_full_state(model, full_state: dict | None) -> None:
    """Fill a sharded model from rank 0's full state dict (other ranks pass None)."""
    set_model_state_dict(model, full_state or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def read_model_config(path: str | Path) -> dict:
    return json.loads((Path(path) / "context" / "model_config.json").read_text())
