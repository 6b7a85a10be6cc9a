"""NeMo 2 distributed checkpoints (``.../weights``) of the Cosmos-1.0 DiT: read, write, and DCP keys.

Layout of a ``weights/`` folder (megatron-core ``dist_checkpointing``; NeMo 2 keeps it under
``<checkpoint>/weights``, NVIDIA ships it under ``nemo/`` of nvidia/Cosmos-1.0-Diffusion-*):

* ``metadata.json``: ``{"sharded_backend": "torch_dist" | "zarr", "sharded_backend_version": 1,
  "common_backend": "torch", "common_backend_version": 1}``;
* ``common.pt``: ``torch.save`` of the non-tensor part of the state (may be ``{}``);
* torch_dist: ``torch.distributed.checkpoint`` files (``.metadata``, ``__*_*.distcp``);
  zarr: one zarr v2 array per key in ``<key>/`` (``.zarray`` + chunk files ``l.0.0``, raw,
  ``"dtype": "bfloat16"`` for bf16 as megatron's zarr strategy wrote it).

Keys are NeMo's (``module.`` + the names of :data:`cosmos_lib.nemo_layout.NEMO_TABLE`), decoder
layers stacked along a leading axis of size ``num_layers``, one chunk per layer (megatron-core
``TransformerBlock.sharded_state_dict``). Transformer Engine ``_extra_state`` objects are skipped on
reading and not written (NeMo loads such checkpoints with ``strict=False``, as Cosmos' NeMo
inference does).

Public API:

* :func:`find_weights_dir`, :func:`is_nemo_checkpoint`, :func:`read_nemo_tensors`,
  :func:`load_nemo_checkpoint`, :func:`load_nemo_as_diffusers` (any NeMo Cosmos-1.0 checkpoint ->
  diffusers state dict (+ config); both backends; no process group needed);
* :func:`save_nemo_checkpoint` (diffusers state dict -> NeMo-keyed ``weights/``, torch_dist or
  zarr, written atomically; megatron-core 0.16.1 ``dist_checkpointing.load`` reads it);
* :func:`to_nemo_dcp` / :func:`from_nemo_dcp`: the key mapping for a trainer that calls
  ``dcp.save`` / ``dcp.load`` itself on an FSDP2 state dict: every NeMo tensor becomes a
  ``ShardedTensor`` whose local shards are this rank's pieces (fused heads from local rows when
  the heads divide evenly; no gathers), so each rank writes only what it holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from cosmos_lib.nemo_convert import (
    EXTRA_STATE, check_offdiag, default_nemo_extras, fuse_heads, nemo_extras, nemo_to_diffusers, split_heads,
)
from cosmos_lib.nemo_layout import (
    BLOCK_DIAG, CONCAT, COPY, HEADS, NEMO_ONLY, NEMO_PREFIX, DiTDims, NemoTensor, dims_from_diffusers_shapes,
    dims_from_nemo_shapes, entries,
)

METADATA_FILE = "metadata.json"
COMMON_FILE = "common.pt"
BACKENDS = ("torch_dist", "zarr")


def megatron_metadata(backend: str) -> dict:
    return {"sharded_backend": backend, "sharded_backend_version": 1,
            "common_backend": "torch", "common_backend_version": 1}


# --- locating and reading ----------------------------------------------------------------------

def find_weights_dir(path: str | os.PathLike) -> Path:
    """The ``weights`` folder of ``path``: the folder itself, ``path/weights``, ``path/nemo/weights``
    or ``path/nemo`` (a Hugging Face snapshot of nvidia/Cosmos-1.0-Diffusion-*), whichever holds
    ``metadata.json``."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such NeMo checkpoint folder")
    for cand in (root, root / "weights", root / "nemo" / "weights", root / "nemo"):
        if (cand / METADATA_FILE).is_file():
            return cand
    raise FileNotFoundError(f"{root}: not a NeMo distributed checkpoint (no {METADATA_FILE} in it, "
                            "in weights/, nemo/weights/ or nemo/)")


def is_nemo_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (or holds) a NeMo ``weights`` folder whose tensors use NeMo's key names."""
    try:
        weights = find_weights_dir(path)
        backend = read_backend(weights)
    except (FileNotFoundError, ValueError):
        return False
    if backend == "zarr":
        return any(p.name.startswith(NEMO_PREFIX) for p in weights.iterdir())
    import torch.distributed.checkpoint as dcp

    try:
        keys = dcp.FileSystemReader(str(weights)).read_metadata().state_dict_metadata
    except Exception:  # noqa: BLE001 - unreadable means: not one we can use
        return False
    return any(k.startswith(NEMO_PREFIX) for k in keys)


def read_backend(weights: Path) -> str:
    try:
        meta = json.loads((weights / METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{weights / METADATA_FILE}: unreadable ({err})") from err
    backend = meta.get("sharded_backend")
    if backend not in BACKENDS:
        raise ValueError(f"{weights / METADATA_FILE}: sharded_backend {backend!r} is not one of {BACKENDS}")
    return backend


def _is_model_key(key: str) -> bool:
    return EXTRA_STATE not in key and not key.startswith("optimizer")


def read_nemo_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every model tensor of a NeMo ``weights`` folder, whole (stacked layers stay stacked)."""
    weights = find_weights_dir(path)
    backend = read_backend(weights)
    return _read_torch_dist(weights) if backend == "torch_dist" else _read_zarr(weights)


def _read_torch_dist(weights: Path) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(weights))
    try:
        meta = reader.read_metadata()
    except Exception as err:  # noqa: BLE001 - any unreadable .metadata is the same error for the user
        raise ValueError(f"{weights}: torch_dist checkpoint metadata unreadable ({err})") from err
    out = {k: torch.empty(tuple(md.size), dtype=md.properties.dtype)
           for k, md in meta.state_dict_metadata.items()
           if isinstance(md, TensorStorageMetadata) and _is_model_key(k)}
    if not out:
        raise ValueError(f"{weights}: torch_dist checkpoint holds no model tensors")
    dcp.load(out, storage_reader=reader, no_dist=True)
    return out


_ZARR_DTYPES = {"bfloat16": torch.bfloat16, "<f4": torch.float32, "<f2": torch.float16, "<f8": torch.float64,
                "|b1": torch.bool, "|u1": torch.uint8, "|i1": torch.int8, "<i2": torch.int16, "<i4": torch.int32,
                "<i8": torch.int64}


def _read_zarr_array(folder: Path) -> torch.Tensor:
    """A zarr v2 array as megatron's zarr strategy wrote it (C order, raw or numcodecs-compressed chunks)."""
    meta = json.loads((folder / ".zarray").read_text())
    if meta.get("zarr_format") != 2 or meta.get("order", "C") != "C" or meta.get("filters"):
        raise ValueError(f"{folder}: unsupported zarr array (format {meta.get('zarr_format')}, order "
                         f"{meta.get('order')}, filters {meta.get('filters')})")
    dtype = _ZARR_DTYPES.get(meta["dtype"])
    if dtype is None:
        raise ValueError(f"{folder}: unsupported zarr dtype {meta['dtype']!r}")
    shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
    sep = meta.get("dimension_separator", ".")
    codec = None
    if meta.get("compressor"):
        import numcodecs  # only needed for compressed arrays
        codec = numcodecs.get_codec(meta["compressor"])
    out = torch.empty(shape, dtype=dtype)
    grid = [range(-(-s // c)) for s, c in zip(shape, chunks)] if shape else [range(1)]
    for idx in np.ndindex(*[len(g) for g in grid]):
        name = sep.join(map(str, idx)) if shape else "0"
        chunk_file = folder / name
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        if not chunk_file.is_file():
            if meta.get("fill_value") is None:
                raise ValueError(f"{folder}: chunk {name} is missing and the array has no fill value")
            out[sl] = float(meta["fill_value"])
            continue
        raw = chunk_file.read_bytes()
        if codec is not None:
            raw = bytes(codec.decode(raw))
        full = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(chunks)  # edge chunks are stored padded
        out[sl] = full[tuple(slice(0, s.stop - s.start) for s in sl)]
    return out


def _read_zarr(weights: Path) -> dict[str, torch.Tensor]:
    out = {}
    for sub in sorted(weights.iterdir()):
        if sub.is_dir() and (sub / ".zarray").is_file() and _is_model_key(sub.name):
            out[sub.name] = _read_zarr_array(sub)
    if not out:
        raise ValueError(f"{weights}: zarr checkpoint holds no arrays")
    return out


@dataclass
class NemoCheckpointInfo:
    weights_dir: Path
    backend: str
    dims: DiTDims
    extras: dict[str, torch.Tensor] = field(repr=False)  # NeMo-only tensors (pos_embedder.seq, logvar)


def load_nemo_checkpoint(path: str | os.PathLike, *, offdiag: str = "error",
                         dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], NemoCheckpointInfo]:
    """A NeMo Cosmos-1.0 DiT checkpoint (torch_dist or zarr) as a diffusers state dict.

    ``offdiag``: see :mod:`cosmos_lib.nemo_convert`. ``dtype`` casts the result (default: as stored).
    """
    weights = find_weights_dir(path)
    backend = read_backend(weights)
    tensors = read_nemo_tensors(weights)
    try:
        dims = dims_from_nemo_shapes({k: tuple(v.shape) for k, v in tensors.items()})
        sd = nemo_to_diffusers(tensors, dims, offdiag=offdiag)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{weights}: {err}") from err
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return sd, NemoCheckpointInfo(weights, backend, dims, nemo_extras(tensors))


def load_nemo_as_diffusers(path: str | os.PathLike, *, variant: str | None = None, dtype: torch.dtype | None = None,
                           offdiag: str = "error") -> tuple[dict[str, torch.Tensor], dict]:
    """(diffusers state dict, ``CosmosTransformer3DModel`` config) of a NeMo checkpoint: what a
    trainer's ``init_from`` needs to start from NVIDIA's NeMo weights (or from ours)."""
    from cosmos_lib.nemo_layout import diffusers_config_for

    sd, info = load_nemo_checkpoint(path, offdiag=offdiag, dtype=dtype)
    return sd, diffusers_config_for(info.dims, variant=variant)


# --- chunk plans: which pieces of which NeMo tensor this rank holds -----------------------------

@dataclass
class _Rows:
    """One diffusers tensor as rows owned by ranks: [(rank, start, size)], plus this rank's rows.

    A plain (or replicated) tensor is claimed whole by every rank; ``dcp.save`` writes one copy
    (identical write items are deduplicated) and ``dcp.load`` fills every rank's copy."""

    tensor: Any                 # the source (plain tensor or DTensor), for rebuilding
    shape: tuple[int, ...]
    parts: list[tuple[int, int, int]]
    local: torch.Tensor | None  # this rank's rows (None when it owns none)


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_initialized() else 0


def _rows_of(t) -> _Rows:
    from torch.distributed.tensor import DTensor, Replicate, Shard

    me = _rank()
    if not isinstance(t, DTensor):
        return _Rows(t, tuple(t.shape), [(me, 0, t.shape[0])], t)
    placements = tuple(t.placements)
    mesh = t.device_mesh
    if all(isinstance(p, Replicate) for p in placements):  # like a plain tensor: every rank has it all
        return _Rows(t, tuple(t.shape), [(me, 0, t.shape[0])], t.to_local())
    if mesh.ndim != 1 or placements != (Shard(0),):
        raise NotImplementedError(f"NeMo checkpoint keys support FSDP Shard(0) on a 1-D mesh, not {placements}")
    n, world = t.shape[0], mesh.size()
    step = -(-n // world)  # torch.chunk semantics, as DTensor Shard(0)
    parts = [(int(mesh.mesh[r]), min(r * step, n), max(0, min(n, (r + 1) * step) - min(r * step, n)))
             for r in range(world)]
    return _Rows(t, tuple(t.shape), [p for p in parts if p[2] > 0], t.to_local())


@dataclass
class _Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    rank: int
    data: torch.Tensor | None  # this rank's data; None on other ranks


@dataclass
class _Piece:
    """How one table row at one layer was split into chunks (to invert on load)."""

    entry: NemoTensor
    layer: int | None
    sources: list[_Rows]
    chunks: list[_Chunk]


def _plan_entry(e: NemoTensor, layer: int | None, srcs: list[_Rows], dims: DiTDims) -> _Piece:
    me = _rank()
    lead = (layer,) if layer is not None else ()
    one = (1,) if layer is not None else ()

    def chunk(offsets, sizes, rank, data):
        d = None
        if rank == me and data is not None:
            d = data.reshape(*one, *data.shape) if one else data
        return _Chunk((*lead, *offsets), (*one, *sizes), rank, d)

    chunks = []
    rest = srcs[0].shape[1:]
    if e.fusion == COPY:
        s = srcs[0]
        chunks = [chunk((st, *[0] * len(rest)), (n, *rest), r, s.local) for r, st, n in s.parts]
    elif e.fusion == HEADS:
        k, hd = len(srcs), dims.head_dim
        same = all(s.parts == srcs[0].parts for s in srcs)
        whole = all(st % hd == 0 and n % hd == 0 for _, st, n in srcs[0].parts)
        if not (same and whole):
            raise ValueError(f"{e.nemo_key(layer)}: the {srcs[0].shape[0] // hd} heads are not split evenly over "
                             "the ranks (each rank must hold whole heads); use a world size that divides them")
        for r, st, n in srcs[0].parts:
            data = fuse_heads([s.local for s in srcs], hd) if r == me else None
            chunks.append(chunk((k * st, *[0] * len(rest)), (k * n, *rest), r, data))
    elif e.fusion == CONCAT:
        total = srcs[0].shape[0]
        for g, s in enumerate(srcs):
            chunks += [chunk((g * total + st, *[0] * len(rest)), (n, *rest), r, s.local) for r, st, n in s.parts]
    elif e.fusion == BLOCK_DIAG:
        k, (rows, cols) = len(srcs), srcs[0].shape
        for g, s in enumerate(srcs):
            for r, st, n in s.parts:
                data = None
                if r == me:
                    z = s.local.new_zeros
                    data = torch.cat([z(n, g * cols), s.local, z(n, (k - 1 - g) * cols)], dim=1)
                chunks.append(chunk((g * rows + st, 0), (n, k * cols), r, data))
    else:
        raise ValueError(e.fusion)
    return _Piece(e, layer, srcs, chunks)


class NemoDCPStateDict(dict):
    """NeMo-keyed state dict of ``ShardedTensor`` (a dict, for ``dcp.save`` / ``dcp.load``) that
    remembers how to turn its local shards back into the diffusers tensors (:func:`from_nemo_dcp`)."""

    pieces: list[_Piece]
    dims: DiTDims


def _sharded_tensor(key: str, shape: tuple[int, ...], chunks: list[_Chunk], like: torch.Tensor, dtype: torch.dtype):
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata, ShardMetadata
    from torch.distributed._shard.sharded_tensor.metadata import TensorProperties

    me = _rank()
    local = [Shard.from_tensor_and_offsets(c.data.contiguous() if not c.data.is_contiguous() else c.data,
                                           list(c.offsets), me) for c in chunks if c.rank == me]
    metadata = ShardedTensorMetadata(
        shards_metadata=[ShardMetadata(list(c.offsets), list(c.sizes),
                                       f"rank:{c.rank}/{like.device if c.rank == me else like.device.type}")
                         for c in chunks],
        size=torch.Size(shape),
        tensor_properties=TensorProperties(dtype=dtype, layout=torch.strided, requires_grad=False,
                                           memory_format=torch.contiguous_format, pin_memory=False))
    return ShardedTensor._init_from_local_shards_and_global_metadata(local, sharded_tensor_metadata=metadata,
                                                                    process_group=None)


def _whole_tensor(shape: tuple[int, ...], chunks: list[_Chunk], dtype: torch.dtype) -> torch.Tensor:
    """The full tensor of one key from all its chunks (single process); each chunk's data becomes
    a view of its region, so that ``dcp.load`` into the whole tensor fills the chunks too."""
    buf = torch.empty(shape, dtype=dtype, device=chunks[0].data.device)
    for c in chunks:
        region = buf[tuple(slice(o, o + n) for o, n in zip(c.offsets, c.sizes))]
        region.copy_(c.data)
        c.data = region
    return buf


def to_nemo_dcp(state_dict: dict[str, Any], dims: DiTDims | None = None, *,
                extras: dict[str, torch.Tensor] | None = None) -> NemoDCPStateDict:
    """diffusers state dict (plain tensors or FSDP2 ``Shard(0)`` DTensors) -> NeMo-keyed
    ``ShardedTensor`` dict in the stacked dist-checkpoint layout, ready for ``dcp.save``/``dcp.load``.

    With a process group, values are ``ShardedTensor`` of this rank's pieces (no copies of plain
    sources); without one (a single process), whole tensors (one copy). Fused heads are built
    from each rank's local rows, which needs the heads to divide evenly over the ranks (else
    ValueError). NeMo-only tensors are held by rank 0.
    """
    local_sd = state_dict
    dims = dims or dims_from_diffusers_shapes({k: tuple(v.shape) for k, v in local_sd.items()})
    any_tensor = next(iter(local_sd.values()))
    like = any_tensor.to_local() if hasattr(any_tensor, "to_local") else any_tensor
    dtype = local_sd["time_embed.norm.weight"].dtype
    extra = default_nemo_extras(dims, dtype)
    if extras:
        extra.update({(k if k.startswith(NEMO_PREFIX) else NEMO_PREFIX + k): v for k, v in extras.items()})
    pieces: list[_Piece] = []
    by_key: dict[str, list[_Chunk]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    used: set[str] = set()
    for e in entries(dims):
        if e.fusion == NEMO_ONLY:
            t = extra[e.nemo_key()].to(device=like.device)
            rows = _Rows(t, tuple(t.shape), [(0, 0, t.shape[0])], t if _rank() == 0 else None)
            piece = _plan_entry(NemoTensor(e.name, ("-",), COPY, e.shape, None, e.ref), None, [rows], dims)
            by_key[e.nemo_key()] = piece.chunks
            shapes[e.nemo_key()] = e.shape(dims)
            dtypes[e.nemo_key()] = t.dtype
            continue
        layers = range(dims.num_layers) if e.per_layer else [None]
        key = e.sharded_key() if e.per_layer else e.nemo_key()
        shapes[key] = ((dims.num_layers,) if e.per_layer else ()) + e.shape(dims)
        for i in layers:
            names = e.diffusers_keys(i)
            missing = [n for n in names if n not in local_sd]
            if missing:
                raise ValueError(f"state dict lacks {missing} (needed for NeMo {e.nemo_key(i)})")
            used.update(names)
            piece = _plan_entry(e, i, [_rows_of(local_sd[n]) for n in names], dims)
            dtypes[key] = local_sd[names[0]].dtype
            pieces.append(piece)
            by_key.setdefault(key, []).extend(piece.chunks)
    unused = sorted(set(local_sd) - used)
    if unused:
        raise ValueError(f"tensors with no place in NeMo's Cosmos-1.0 layout: {unused[:8]}")
    import torch.distributed as dist

    if dist.is_initialized():
        out = NemoDCPStateDict({k: _sharded_tensor(k, shapes[k], c, like, dtypes[k]) for k, c in by_key.items()})
    else:  # one process, no process group: whole tensors whose regions the chunks become views of
        out = NemoDCPStateDict({k: _whole_tensor(shapes[k], c, dtypes[k]) for k, c in by_key.items()})
    out.pieces = pieces
    out.dims = dims
    return out


def from_nemo_dcp(nemo: NemoDCPStateDict, *, offdiag: str = "error") -> dict[str, Any]:
    """Inverse of :func:`to_nemo_dcp` after ``dcp.load`` filled its shards: diffusers tensors
    (DTensors with the placements of the originals, or plain tensors)."""
    from torch.distributed.tensor import DTensor

    me = _rank()
    out: dict[str, Any] = {}
    for p in nemo.pieces:
        e, names, k = p.entry, p.entry.diffusers_keys(p.layer), len(p.sources)
        mine = [c.data.reshape(c.sizes[1:]) if p.layer is not None else c.data for c in p.chunks if c.rank == me]
        if not mine:
            locals_ = [None] * k
        elif e.fusion == COPY:
            locals_ = mine[:1]
        elif e.fusion == HEADS:
            locals_ = split_heads(mine[0], k, nemo.dims.head_dim)
        elif e.fusion == CONCAT:
            locals_ = mine
        else:  # BLOCK_DIAG: this rank's zero-padded row band of each group
            cols = p.sources[0].shape[1]
            locals_ = []
            for g, band in enumerate(mine):
                diag = band[:, g * cols:(g + 1) * cols]
                off = torch.cat([band[:, :g * cols], band[:, (g + 1) * cols:]], dim=1)
                check_offdiag(off, offdiag=offdiag, name=e.nemo_key(p.layer))
                locals_.append(diag.contiguous())
        for name, src, loc in zip(names, p.sources, locals_):
            t = src.tensor
            if isinstance(t, DTensor):
                out[name] = DTensor.from_local(loc, t.device_mesh, t.placements, run_check=False,
                                               shape=t.shape, stride=t.stride())
            else:
                out[name] = loc
    return out


# --- writing -----------------------------------------------------------------------------------

@contextlib.contextmanager
def single_process_group() -> Iterator[None]:
    """A one-rank gloo process group for the duration (no-op when one is already initialised)."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target}: already exists; refusing to overwrite a checkpoint")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_nemo_checkpoint(state_dict: dict[str, torch.Tensor], weights_dir: str | os.PathLike, *,
                         dims: DiTDims | None = None, extras: dict[str, torch.Tensor] | None = None,
                         backend: str = "torch_dist", dtype: torch.dtype | None = None,
                         common: dict | None = None) -> Path:
    """Write a diffusers state dict (plain tensors, one process) as a NeMo ``weights/`` folder.

    ``backend``: ``torch_dist`` (DCP, what NeMo 2 writes by default) or ``zarr`` (what NVIDIA's
    Cosmos-1.0 NeMo checkpoints use). ``extras``: NeMo-only tensors (e.g. from
    :class:`NemoCheckpointInfo`), else :func:`cosmos_lib.nemo_convert.default_nemo_extras`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    sd = {k: (v.to(dtype) if dtype is not None else v).detach().cpu() for k, v in state_dict.items()}
    dims = dims or dims_from_diffusers_shapes({k: tuple(v.shape) for k, v in sd.items()})
    if extras and dtype is not None:
        extras = {k: v.to(dtype) for k, v in extras.items()}
    with _atomic_dir(Path(weights_dir)) as tmp:
        if backend == "torch_dist":
            import torch.distributed.checkpoint as dcp

            with single_process_group():
                nemo = to_nemo_dcp(sd, dims, extras=extras)
                dcp.save(dict(nemo), storage_writer=dcp.FileSystemWriter(str(tmp)), no_dist=True)
        else:
            _write_zarr(sd, tmp, dims, extras)
        (tmp / METADATA_FILE).write_text(json.dumps(megatron_metadata(backend)))
        torch.save(common if common is not None else {}, tmp / COMMON_FILE)
    return Path(weights_dir)


def _zarr_dtype(dtype: torch.dtype) -> str:
    for name, t in _ZARR_DTYPES.items():
        if t == dtype:
            return name
    raise ValueError(f"dtype {dtype} cannot be stored in a zarr checkpoint")


def _write_zarr_array(folder: Path, chunks: list[tuple[tuple[int, ...], torch.Tensor]], shape, chunk_shape, dtype):
    """One zarr v2 array as megatron's zarr strategy wrote it: raw C-order chunks, no compressor."""
    folder.mkdir()
    (folder / ".zarray").write_text(json.dumps({
        "chunks": list(chunk_shape), "compressor": None, "dtype": _zarr_dtype(dtype), "fill_value": None,
        "filters": None, "order": "C", "shape": list(shape), "zarr_format": 2}, indent=4))
    for index, data in chunks:
        raw = data.contiguous().view(torch.uint8) if data.dtype != torch.bool else data.contiguous().to(torch.uint8)
        (folder / ".".join(map(str, index))).write_bytes(raw.numpy().tobytes())


def _write_zarr(sd: dict[str, torch.Tensor], out: Path, dims: DiTDims, extras) -> None:
    from cosmos_lib.nemo_convert import diffusers_to_nemo

    nemo = diffusers_to_nemo(sd, dims, extras=extras)  # per-layer NeMo tensors
    for e in entries(dims):
        if e.per_layer:
            layers = [nemo[e.nemo_key(i)] for i in range(dims.num_layers)]
            shape = (dims.num_layers, *layers[0].shape)
            _write_zarr_array(out / e.sharded_key(), [((i, *[0] * layers[0].dim()), t.unsqueeze(0))
                                                      for i, t in enumerate(layers)],
                              shape, (1, *layers[0].shape), layers[0].dtype)
        else:
            t = nemo[e.nemo_key()]
            _write_zarr_array(out / e.nemo_key(), [((0,) * t.dim(), t)], tuple(t.shape), tuple(t.shape), t.dtype)


# --- folder-to-folder conversions (the CLI and the workflow rules call these) --------------------

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
# NeMo-only tensors kept next to a converted diffusers model (not *.safetensors: loaders glob those)
EXTRAS_FILE = "nemo_extras.pt"


def read_diffusers_transformer(src: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict | None]:
    """(state dict, transformer config, NeMo extras or None) of a diffusers Cosmos transformer.

    ``src``: a diffusers model folder (with ``transformer/``), a ``transformer/`` folder
    (``config.json`` + ``diffusion_pytorch_model*.safetensors``), or a checkpoint folder of
    :mod:`cosmos_lib.train` whose ``weights/`` still use diffusers names (``context/model_config.json``).
    """
    from safetensors.torch import load_file

    root = Path(src)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such diffusers model folder")
    for folder in (root / "transformer", root):
        files = sorted(folder.glob(f"{DIFFUSERS_WEIGHTS}*.safetensors"))
        if (folder / "config.json").is_file() and files:
            config = json.loads((folder / "config.json").read_text())
            sd: dict[str, torch.Tensor] = {}
            for f in files:
                sd.update(load_file(str(f)))
            extras = (torch.load(folder / EXTRAS_FILE, weights_only=True) if (folder / EXTRAS_FILE).is_file()
                      else None)
            return sd, config, extras
    if (root / "context" / "model_config.json").is_file() and (root / "weights" / METADATA_FILE).is_file():
        config = json.loads((root / "context" / "model_config.json").read_text())
        tensors = _read_torch_dist(root / "weights")
        if any(k.startswith(NEMO_PREFIX) for k in tensors):
            raise ValueError(f"{root}: its weights already use NeMo's key names; it is a NeMo checkpoint")
        return tensors, config, None
    raise FileNotFoundError(f"{root}: neither a diffusers transformer (config.json + {DIFFUSERS_WEIGHTS}*.safetensors, "
                            "here or in transformer/) nor a cosmos_lib training checkpoint")


def export_nemo_to_diffusers(src: str | os.PathLike, out: str | os.PathLike, *, variant: str | None = None,
                             dtype: torch.dtype | None = None, offdiag: str = "error") -> Path:
    """NeMo checkpoint folder -> diffusers ``transformer`` folder (config.json + safetensors), atomically.

    The NeMo-only tensors are kept in ``nemo_extras.pt`` so that converting back gives
    the NeMo checkpoint bit for bit.
    """
    from diffusers import CosmosTransformer3DModel

    from cosmos_lib.nemo_layout import diffusers_config_for

    sd, info = load_nemo_checkpoint(src, offdiag=offdiag, dtype=dtype)
    config = diffusers_config_for(info.dims, variant=variant)
    with torch.device("meta"):
        model = CosmosTransformer3DModel(**config)
    model.load_state_dict(sd, strict=True, assign=True)
    with _atomic_dir(Path(out)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        torch.save({k: v.contiguous() for k, v in info.extras.items()}, tmp / EXTRAS_FILE)
    return Path(out)


def export_diffusers_to_nemo(src: str | os.PathLike, out: str | os.PathLike, *, backend: str = "torch_dist",
                             dtype: torch.dtype | None = None) -> Path:
    """diffusers transformer (or diffusers-keyed training checkpoint) -> NeMo checkpoint folder:
    ``out/weights`` (NeMo keys, ``backend``) and ``out/context/model_config.json`` (the diffusers config)."""
    sd, config, extras = read_diffusers_transformer(src)
    dims = DiTDims.from_diffusers_config(config)
    with _atomic_dir(Path(out)) as tmp:
        save_nemo_checkpoint(sd, tmp / "weights", dims=dims, extras=extras, backend=backend, dtype=dtype)
        (tmp / "context").mkdir()
        (tmp / "context" / "model_config.json").write_text(json.dumps(config, indent=1, default=list))
    return Path(out)
