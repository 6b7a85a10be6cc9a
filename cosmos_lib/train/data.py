"""Training data: the flat NeMo sample folder, read directly (format: cosmos_lib.sample_format).

* :func:`check_dataset` runs before any GPU time: the folder exists and is not empty, every
  sample has its five files and nothing else is there, and every tensor's shape and dtype agree
  with each other and with the model (read through ``mmap``, so no tensor data is loaded).
* :class:`StreamSampler` cuts one seeded, endless stream of samples (a fresh permutation per
  epoch) into global batches; rank ``r`` takes its contiguous share of each global batch. Its
  state is just the number of samples consumed, so a resume continues the same stream.
* :class:`SampleFolder` loads one sample (video latent, T5 embeddings, fps) in a DataLoader
  worker; the batch carries each sample's stream position, which keys its noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cosmos_lib import sample_format as sf
from cosmos_lib.sample_format import SampleError


def _tensor_meta(path: Path) -> tuple[tuple[int, ...], torch.dtype]:
    try:
        t = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error
        raise SampleError(f"{path}: cannot be read as a torch tensor ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(t, torch.Tensor):
        raise SampleError(f"{path}: holds a {type(t).__name__}, not one tensor")
    return tuple(t.shape), t.dtype


def check_dataset(folder: str | os.PathLike, model_config: dict, *, video2world: bool = False,
                  min_condition_frames: int = 1) -> tuple[list[str], tuple[int, ...]]:
    """Check the sample folder against the format and the model; return (prefixes, latent shape).

    Raises :class:`SampleError` naming the file for a missing or empty folder, an incomplete
    sample, a stray file, or a tensor whose shape or dtype does not fit.
    """
    folder = Path(folder)
    prefixes = sf.validate_folder(folder, deep=False)
    latent_shape: tuple[int, ...] | None = None
    for prefix in prefixes:
        for suffix in sf.TENSOR_SUFFIXES:
            path = sf.sample_path(folder, prefix, suffix)
            shape, dtype = _tensor_meta(path)
            if dtype != sf.TENSOR_DTYPE:
                raise SampleError(f"{path}: dtype {dtype}, expected {sf.TENSOR_DTYPE}")
            if suffix in (sf.VIDEO_LATENT, sf.CONDITIONING_LATENT):
                if latent_shape is None:
                    _check_latent_against_model(path, shape, model_config, video2world, min_condition_frames)
                    latent_shape = shape
                elif shape != latent_shape:
                    raise SampleError(f"{path}: shape {shape}, expected {latent_shape} like the other samples")
            elif suffix == sf.T5_EMBEDDINGS and shape != (sf.T5_MAX_LENGTH, model_config.get("text_embed_dim", sf.T5_DIM)):
                raise SampleError(f"{path}: shape {shape}, expected {(sf.T5_MAX_LENGTH, model_config.get('text_embed_dim', sf.T5_DIM))}")
            elif suffix == sf.T5_MASK and shape != (sf.T5_MAX_LENGTH,):
                raise SampleError(f"{path}: shape {shape}, expected {(sf.T5_MAX_LENGTH,)}")
        sf.read_info(sf.sample_path(folder, prefix, sf.INFO))
    assert latent_shape is not None
    return prefixes, latent_shape


def _check_latent_against_model(path, shape, cfg, video2world, min_condition_frames) -> None:
    channels = cfg.get("out_channels", sf.LATENT_CHANNELS)
    if len(shape) != 4 or shape[0] != channels:
        raise SampleError(f"{path}: shape {shape}, the model expects ({channels}, T, H, W)")
    pt, ph, pw = cfg["patch_size"]
    mt, mh, mw = cfg["max_size"]
    _, t, h, w = shape
    if t % pt or h % ph or w % pw:
        raise SampleError(f"{path}: latent (T, H, W)={shape[1:]} is not divisible by the patch size {tuple(cfg['patch_size'])}")
    if t > mt or h > mh or w > mw:
        raise SampleError(f"{path}: latent (T, H, W)={shape[1:]} exceeds the model's max_size {tuple(cfg['max_size'])}")
    if video2world and t <= min_condition_frames:
        raise SampleError(f"{path}: {t} latent frames leave nothing to generate after {min_condition_frames} condition frames")


class StreamSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of ``(sample index, stream position)`` for one data-parallel rank, endless.

    Stream position ``p`` is sample ``perm_e[p % N]`` of epoch ``e = p // N``, with ``perm_e`` a
    permutation seeded by ``(seed, e)``. Global batch ``s`` covers positions ``[s G, (s+1) G)``;
    rank ``r`` takes ``[s G + r m a, s G + (r+1) m a)`` as ``a`` micro-batches of ``m``.
    """

    def __init__(self, num_samples: int, *, global_batch: int, micro_batch: int, rank: int, world: int,
                 seed: int, start_step: int = 0) -> None:
        if global_batch % (micro_batch * world):
            raise ValueError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x {world} ranks")
        self.n, self.g, self.m, self.rank, self.world, self.seed = num_samples, global_batch, micro_batch, rank, world, seed
        self.accumulation = global_batch // (micro_batch * world)
        self.start_step = start_step
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm_cache = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perm_cache[epoch]

    def index(self, position: int) -> int:
        return self._perm(position // self.n)[position % self.n]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        share = self.m * self.accumulation
        while True:
            base = step * self.g + self.rank * share
            for a in range(self.accumulation):
                positions = range(base + a * self.m, base + (a + 1) * self.m)
                yield [(self.index(p), p) for p in positions]
            step += 1

    def state_dict(self, step: int) -> dict:
        return {"seed": self.seed, "num_samples": self.n, "global_batch": self.g, "consumed_samples": step * self.g}


class SampleFolder(Dataset):
    """One training sample: normalised video latent, T5 embeddings and fps (from info.json)."""

    def __init__(self, folder: str | os.PathLike, prefixes: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.prefixes = list(prefixes)

    def __len__(self) -> int:
        return len(self.prefixes)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, position = item
        prefix = self.prefixes[index]
        info = sf.read_info(sf.sample_path(self.folder, prefix, sf.INFO))
        return {
            "video": sf.load_tensor(sf.sample_path(self.folder, prefix, sf.VIDEO_LATENT)),
            "t5": sf.load_tensor(sf.sample_path(self.folder, prefix, sf.T5_EMBEDDINGS)),
            "fps": float(info["fps"]),
            "position": int(position),
        }


def collate(samples: list[dict]) -> dict:
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "t5": torch.stack([s["t5"] for s in samples]),
        "fps": torch.tensor([s["fps"] for s in samples], dtype=torch.float64),
        "position": torch.tensor([s["position"] for s in samples], dtype=torch.int64),
    }


def build_loader(folder, prefixes, sampler: StreamSampler, *, num_workers: int, pin_memory: bool) -> DataLoader:
    kwargs = dict(num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory)
    if num_workers > 0:
        kwargs.update(prefetch_factor=4, persistent_workers=True)
    return DataLoader(SampleFolder(folder, prefixes), batch_sampler=sampler, **kwargs)
