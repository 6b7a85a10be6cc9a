"""diffusers ``CosmosTransformer3DModel`` state dict <-> NeMo Cosmos-1.0 DiT state dict, exact.

Every key name, shape and fusion comes from :data:`cosmos_lib.nemo_layout.NEMO_TABLE`; this
module only applies them. All operations are copies and reshapes (no arithmetic), so a round
trip reproduces every value bit for bit.

* :func:`diffusers_to_nemo` / :func:`nemo_to_diffusers`: whole state dicts of plain tensors.
  NeMo dicts use per-layer keys (``module.decoder.layers.N.<name>``, as NeMo's model state dict)
  or, on input, the stacked keys of a distributed checkpoint (``module.decoder.layers.<name>``
  with a leading layer axis); :func:`stack_layers` / :func:`unstack_layers` switch between them.
* :func:`fuse_heads` / :func:`split_heads`: megatron's per-head interleave of q/k/v rows. They
  only move whole head blocks of rows, so they also apply to a rank's local rows; and
  :func:`fuse_heads_dtensor` / :func:`split_heads_dtensor` build the fused tensor of FSDP
  (``Shard(0)``) DTensors from each rank's local rows, without gathering, when the heads divide
  evenly across ranks.
* The AdaLN-LoRA of the three sub-blocks is ONE linear pair in NeMo (``adaLN_modulation.1`` =
  the three down-projections stacked, ``adaLN_modulation.2`` = the three up-projections
  block-diagonally). NeMo -> diffusers needs the off-diagonal blocks to be zero (true for
  NVIDIA's converted checkpoints and for everything written from diffusers); NeMo training can
  make them non-zero, which diffusers cannot represent: ``offdiag="error"`` (default) refuses,
  ``offdiag="drop"`` drops them with a warning that says how large they were.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from cosmos_lib.nemo_layout import (
    BLOCK_DIAG, CONCAT, COPY, HEADS, LAYER_PREFIX, LOGVAR_CHANNELS, NEMO_ONLY, NEMO_PREFIX, NEMO_TABLE, DiTDims,
    NemoTensor, dims_from_diffusers_shapes, dims_from_nemo_shapes, entries,
)

EXTRA_STATE = "_extra_state"  # Transformer Engine FP8 metadata objects: not weights, skipped


class AdaLNNotBlockDiagonalError(ValueError):
    """A NeMo fused AdaLN-LoRA up-projection has non-zero off-diagonal blocks."""


# --- fusion primitives (plain tensors, or one rank's local rows) -------------------------------

def fuse_heads(parts: list[torch.Tensor], head_dim: int) -> torch.Tensor:
    """Interleave k tensors of ``(n_heads * head_dim, ...)`` rows per head: ``[p0_h, p1_h, ...]`` for each h."""
    rows = parts[0].shape[0]
    if rows % head_dim or any(p.shape != parts[0].shape for p in parts):
        raise ValueError(f"cannot fuse {[tuple(p.shape) for p in parts]} per head of {head_dim} rows")
    n = rows // head_dim
    rest = parts[0].shape[1:]
    return torch.stack([p.reshape(n, head_dim, *rest) for p in parts], dim=1).reshape(len(parts) * rows, *rest)


def split_heads(fused: torch.Tensor, k: int, head_dim: int) -> list[torch.Tensor]:
    """Inverse of :func:`fuse_heads`."""
    if fused.shape[0] % (k * head_dim):
        raise ValueError(f"{tuple(fused.shape)} rows are not whole groups of {k} heads of {head_dim}")
    n = fused.shape[0] // (k * head_dim)
    rest = fused.shape[1:]
    grouped = fused.reshape(n, k, head_dim, *rest)
    return [grouped[:, j].reshape(n * head_dim, *rest).contiguous() for j in range(k)]


def block_diag(parts: list[torch.Tensor]) -> torch.Tensor:
    """Block-diagonal matrix of 2-D ``parts`` (zeros elsewhere), in their dtype."""
    return torch.block_diag(*parts)


def split_block_diag(fused: torch.Tensor, k: int, *, offdiag: str = "error", name: str = "") -> list[torch.Tensor]:
    """The k diagonal blocks of ``fused``; see the module docstring for ``offdiag``."""
    r, c = fused.shape[0] // k, fused.shape[1] // k
    if r * k != fused.shape[0] or c * k != fused.shape[1]:
        raise ValueError(f"{name}: {tuple(fused.shape)} is not a {k}x{k} block matrix")
    blocks = [fused[g * r:(g + 1) * r, g * c:(g + 1) * c].contiguous() for g in range(k)]
    mask = torch.ones(k, k, dtype=torch.bool)
    mask.fill_diagonal_(False)
    check_offdiag(fused.reshape(k, r, k, c).permute(0, 2, 1, 3)[mask], offdiag=offdiag, name=name)
    return blocks


def check_offdiag(off: torch.Tensor, *, offdiag: str, name: str) -> None:
    """Apply the ``offdiag`` policy to the off-diagonal values of a fused AdaLN-LoRA up-projection."""
    if offdiag not in ("error", "drop"):
        raise ValueError(f"offdiag must be 'error' or 'drop', not {offdiag!r}")
    if not off.numel() or off.is_meta or not bool(off.ne(0).any()):
        return  # (meta tensors: shape checks only)
    largest = float(off.abs().max())
    if offdiag == "error":
        raise AdaLNNotBlockDiagonalError(
            f"{name}: the fused AdaLN-LoRA up-projection has non-zero off-diagonal blocks (max |w| = "
            f"{largest:.3g}), as after training in NeMo; diffusers' CosmosTransformer3DModel cannot represent "
            "them. Pass offdiag='drop' to drop them (the converted model is then not identical).")
    warnings.warn(f"{name}: dropping non-zero off-diagonal AdaLN-LoRA blocks (max |w| = {largest:.3g})",
                  stacklevel=3)


def fuse(entry: NemoTensor, parts: list[torch.Tensor], dims: DiTDims) -> torch.Tensor:
    """The NeMo tensor of one table row from its diffusers tensors."""
    if entry.fusion == COPY:
        return parts[0]
    if entry.fusion == HEADS:
        return fuse_heads(parts, dims.head_dim)
    if entry.fusion == CONCAT:
        return torch.cat(parts, dim=0)
    if entry.fusion == BLOCK_DIAG:
        return block_diag(parts)
    raise ValueError(f"{entry.name}: fusion {entry.fusion} has no diffusers sources")


def unfuse(entry: NemoTensor, fused: torch.Tensor, dims: DiTDims, *, offdiag: str = "error",
           name: str = "") -> list[torch.Tensor]:
    """The diffusers tensors of one table row from its NeMo tensor."""
    k = len(entry.sources)
    if entry.fusion == COPY:
        return [fused]
    if entry.fusion == HEADS:
        return split_heads(fused, k, dims.head_dim)
    if entry.fusion == CONCAT:
        return [c.contiguous() for c in fused.chunk(k, dim=0)]
    if entry.fusion == BLOCK_DIAG:
        return split_block_diag(fused, k, offdiag=offdiag, name=name or entry.name)
    raise ValueError(f"{entry.name}: fusion {entry.fusion} has no diffusers sources")


# --- whole state dicts -------------------------------------------------------------------------

def _shapes(sd: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}


def _check_shape(key: str, tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{what} tensor {key} has shape {tuple(tensor.shape)}, the NeMo layout table says {expected}")


def default_nemo_extras(dims: DiTDims, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """NeMo-only tensors for weights that come from diffusers (which has none of them).

    ``pos_embedder.seq`` is NeMo's ``arange`` buffer; ``logvar`` (the training loss's learned
    uncertainty) gets fixed-seed Fourier features and a zero output weight, i.e. logvar = 0.
    """
    gen = torch.Generator().manual_seed(0)
    return {
        NEMO_PREFIX + "pos_embedder.seq": torch.arange(dims.rope_len, dtype=torch.float32).to(dtype),
        NEMO_PREFIX + "logvar.0.freqs": (2 * torch.pi * torch.randn(LOGVAR_CHANNELS, generator=gen)).to(dtype),
        NEMO_PREFIX + "logvar.0.phases": (2 * torch.pi * torch.rand(LOGVAR_CHANNELS, generator=gen)).to(dtype),
        NEMO_PREFIX + "logvar.1.weight": torch.zeros(1, LOGVAR_CHANNELS, dtype=dtype),
    }


def nemo_extras(nemo_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The NeMo-only tensors of a NeMo state dict (to carry through a trip via diffusers)."""
    names = {NEMO_PREFIX + e.name for e in NEMO_TABLE if e.fusion == NEMO_ONLY}
    return {k: v for k, v in _with_prefix(nemo_sd).items() if k in names}


def diffusers_to_nemo(sd: dict[str, torch.Tensor], dims: DiTDims | None = None, *,
                      extras: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """diffusers state dict -> NeMo state dict with per-layer ``module.decoder.layers.N.`` keys.

    Every diffusers key must be consumed and every shape must match the table (else ValueError
    naming the key). ``extras`` supplies the NeMo-only tensors (default :func:`default_nemo_extras`
    in the dtype of ``affline_norm``).
    """
    dims = dims or dims_from_diffusers_shapes(_shapes(sd))
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    dtype = sd["time_embed.norm.weight"].dtype if "time_embed.norm.weight" in sd else torch.float32
    extra = default_nemo_extras(dims, dtype)
    if extras:
        extra.update(_with_prefix(extras))
    for e in entries(dims):
        for i in (range(dims.num_layers) if e.per_layer else [None]):
            key = e.nemo_key(i)
            if e.fusion == NEMO_ONLY:
                out[key] = extra[key]
                _check_shape(key, out[key], e.shape(dims), "NeMo-only")
                continue
            names = e.diffusers_keys(i)
            missing = [n for n in names if n not in sd]
            if missing:
                raise ValueError(f"diffusers state dict lacks {missing} (needed for NeMo {key})")
            out[key] = fuse(e, [sd[n] for n in names], dims)
            _check_shape(key, out[key], e.shape(dims), "converted")
            used.update(names)
    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"diffusers tensors with no place in NeMo's Cosmos-1.0 layout: {unused[:8]}"
                         f"{' ...' if len(unused) > 8 else ''}")
    return out


def _with_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    return {(k if k.startswith(NEMO_PREFIX) else NEMO_PREFIX + k): v for k, v in sd.items()}


def is_stacked(nemo_sd: dict[str, Any]) -> bool:
    """Whether decoder layers use the stacked (distributed checkpoint) keys."""
    head = NEMO_PREFIX + LAYER_PREFIX
    return any(k.startswith(head) and not k[len(head):].split(".")[0].isdigit() for k in _with_prefix(nemo_sd))


def stack_layers(nemo_sd: dict[str, torch.Tensor], dims: DiTDims) -> dict[str, torch.Tensor]:
    """Per-layer keys -> stacked keys with a leading layer axis (the dist-checkpoint view)."""
    out = {}
    for e in entries(dims):
        if e.per_layer:
            out[e.sharded_key()] = torch.stack([nemo_sd[e.nemo_key(i)] for i in range(dims.num_layers)])
        else:
            out[e.nemo_key()] = nemo_sd[e.nemo_key()]
    return out


def unstack_layers(nemo_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stacked keys -> per-layer keys (views). Per-layer input is returned as is."""
    sd = _with_prefix(nemo_sd)
    if not is_stacked(sd):
        return sd
    head = NEMO_PREFIX + LAYER_PREFIX
    out = {}
    for k, v in sd.items():
        if k.startswith(head):
            rest = k[len(head):]
            for i in range(v.shape[0]):
                out[f"{head}{i}.{rest}"] = v[i]
        else:
            out[k] = v
    return out


def nemo_to_diffusers(nemo_sd: dict[str, torch.Tensor], dims: DiTDims | None = None, *,
                      offdiag: str = "error") -> dict[str, torch.Tensor]:
    """NeMo state dict (per-layer or stacked keys, with or without ``module.``) -> diffusers state dict.

    ``_extra_state`` entries (Transformer Engine metadata) are ignored; any other key the table
    does not know raises ValueError, as does a wrong shape.
    """
    sd = {k: v for k, v in unstack_layers(nemo_sd).items() if EXTRA_STATE not in k}
    dims = dims or dims_from_nemo_shapes(_shapes(sd))
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    for e in entries(dims):
        for i in (range(dims.num_layers) if e.per_layer else [None]):
            key = e.nemo_key(i)
            if key not in sd:
                if e.fusion == NEMO_ONLY:
                    continue
                raise ValueError(f"NeMo state dict lacks {key}")
            used.add(key)
            _check_shape(key, sd[key], e.shape(dims), "NeMo")
            if e.fusion == NEMO_ONLY:
                continue
            out.update(zip(e.diffusers_keys(i), unfuse(e, sd[key], dims, offdiag=offdiag, name=key)))
    unknown = sorted(set(sd) - used)
    if unknown:
        raise ValueError(f"NeMo tensors not in the Cosmos-1.0 DiT layout table: {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out


# --- FSDP DTensors: fused heads from each rank's local rows, no gather ---------------------------

def _shard0_mesh(parts) -> tuple[Any, tuple]:
    """Check the DTensors share one mesh and are ``Shard(0)`` (or replicated) on every mesh dim."""
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = parts[0].device_mesh, tuple(parts[0].placements)
    for p in parts:
        if p.device_mesh != mesh or tuple(p.placements) != placements or p.shape != parts[0].shape:
            raise ValueError("fused DTensors must share mesh, placements and shape")
    shard_dims = [d for d, pl in enumerate(placements) if isinstance(pl, Shard)]
    if any(not (isinstance(pl, Replicate) or pl == Shard(0)) for pl in placements) or len(shard_dims) > 1:
        raise ValueError(f"only Shard(0) on one mesh dimension (FSDP) is supported, not {placements}")
    return mesh, placements


def heads_divide_evenly(global_rows: int, head_dim: int, world: int) -> bool:
    """Whether ``Shard(0)`` (torch.chunk) over ``world`` ranks gives every rank the same whole heads."""
    return global_rows % (head_dim * world) == 0


def fuse_heads_dtensor(parts: list, head_dim: int):
    """Fused-heads DTensor of ``Shard(0)`` DTensors, from local rows only (no gather).

    Each rank holds heads ``[r*n/W, (r+1)*n/W)`` of every part; interleaved they are exactly rows
    ``[r*k*N/W, (r+1)*k*N/W)`` of the fused tensor, i.e. its ``Shard(0)`` local piece. Raises
    ValueError when the heads do not divide evenly (gather with ``full_tensor()`` then).
    """
    from torch.distributed.tensor import DTensor, Shard

    mesh, placements = _shard0_mesh(parts)
    rows, rest = parts[0].shape[0], tuple(parts[0].shape[1:])
    world = 1
    for d, pl in enumerate(placements):
        if pl == Shard(0):
            world = mesh.size(d)
    if not heads_divide_evenly(rows, head_dim, world):
        raise ValueError(f"{rows // head_dim} heads do not divide evenly over {world} ranks")
    local = fuse_heads([p.to_local() for p in parts], head_dim)
    shape = (len(parts) * rows, *rest)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=torch.Size(shape), stride=stride)


def split_heads_dtensor(fused, k: int, head_dim: int) -> list:
    """Inverse of :func:`fuse_heads_dtensor` (local rows only)."""
    from torch.distributed.tensor import DTensor, Shard

    mesh, placements = _shard0_mesh([fused])
    world = 1
    for d, pl in enumerate(placements):
        if pl == Shard(0):
            world = mesh.size(d)
    rows = fused.shape[0] // k
    if rows * k != fused.shape[0] or not heads_divide_evenly(rows, head_dim, world):
        raise ValueError(f"{tuple(fused.shape)} does not split into {k} parts of whole heads over {world} ranks")
    shape = (rows, *fused.shape[1:])
    stride = torch.empty(shape, device="meta").stride()
    return [DTensor.from_local(p, mesh, placements, run_check=False, shape=torch.Size(shape), stride=stride)
            for p in split_heads(fused.to_local(), k, head_dim)]
