"""The cached post-training sample format that NVIDIA's Cosmos-1.0 NeMo post-training reads.

This module is the one place that states the format (see ../shared/DESIGN.md, reference:
cosmos1/models/diffusion/nemo/post_training/prepare_dataset.py). Everything that writes or
reads samples goes through it: the preprocessing jobs, the dataset aggregate and the trainer.

A sample is five files sharing a prefix ``P`` in one flat folder:

=============================  ======================================  ==========
file                           content                                 dtype
=============================  ======================================  ==========
``P.video_latent.pth``         normalised tokenizer latent (C,T',H',W') bfloat16
``P.conditioning_latent.pth``  latent of first frames + zero frames     bfloat16
``P.t5_text_embeddings.pth``   T5 last_hidden_state (512, 1024)         bfloat16
``P.t5_text_mask.pth``         all ones (512,)                          bfloat16
``P.info.json``                height, width, fps, num_frames, ...      JSON
=============================  ======================================  ==========

NeMo's loader takes ``filename.split('.')[0]`` as the sample name, so ``P`` holds no dot.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported where a tensor is made or read, not here: the Snakefile imports this module,
# and every Snakemake process (planning, each cluster job) would pay for torch's import.

# --- the facts -------------------------------------------------------------------------------
VIDEO_LATENT = "video_latent.pth"
CONDITIONING_LATENT = "conditioning_latent.pth"
T5_EMBEDDINGS = "t5_text_embeddings.pth"
T5_MASK = "t5_text_mask.pth"
INFO = "info.json"
#: every file of a sample; info.json is written last, so its presence marks a finished sample
SUFFIXES = (VIDEO_LATENT, CONDITIONING_LATENT, T5_EMBEDDINGS, T5_MASK, INFO)
TENSOR_SUFFIXES = SUFFIXES[:4]

TENSOR_DTYPE_NAME = "bfloat16"  # sample_format.TENSOR_DTYPE: that torch dtype
T5_MAX_LENGTH = 512
T5_DIM = 1024
LATENT_CHANNELS = 16
TEMPORAL_COMPRESSION = 8
SPATIAL_COMPRESSION = 8
INFO_KEYS = ("height", "width", "fps", "num_frames", "video_path", "start_frame")

#: a sample prefix: no dot, no path separator, not hidden
PREFIX_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class SampleError(ValueError):
    """A sample (or a folder of samples) does not follow the format; the message names the file."""


def latent_frames(num_frames: int) -> int:
    """Latent frames of the causal CV8x8x8 tokenizer: the first frame alone, then 8 frames each."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_COMPRESSION:
        raise ValueError(f"num_frames must be 1 + 8k, got {num_frames}")
    return 1 + (num_frames - 1) // TEMPORAL_COMPRESSION


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, T', H', W') of one sample's video latent, e.g. (16, 16, 88, 160) for 121x704x1280."""
    if height % SPATIAL_COMPRESSION or width % SPATIAL_COMPRESSION:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
    return (
        LATENT_CHANNELS,
        latent_frames(num_frames),
        height // SPATIAL_COMPRESSION,
        width // SPATIAL_COMPRESSION,
    )


def conditioning_latent_frames(conditioning_frames: int) -> int:
    """Latent frames fully determined by the first ``conditioning_frames`` pixel frames (9 -> 2)."""
    return latent_frames(conditioning_frames)


def sample_path(folder: str | os.PathLike, prefix: str, suffix: str) -> Path:
    return Path(folder) / f"{prefix}.{suffix}"


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise SampleError(f"sample prefix {prefix!r} is not allowed: use letters, digits, '_' and '-' only")
    return prefix


# --- writing ---------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Write through a hidden temporary name in the same folder, then rename: never a partial file.

    No fsync per file: after a crash Snakemake reruns the jobs whose outputs it marked incomplete,
    and a job's files are checked as a whole (info.json last), so durability comes from there.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def __getattr__(name: str):
    if name == "TENSOR_DTYPE":
        return _tensor_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tensor_dtype() -> "torch.dtype":
    import torch

    return getattr(torch, TENSOR_DTYPE_NAME)


def atomic_torch_save(path: str | os.PathLike, tensor: torch.Tensor) -> None:
    import torch

    _atomic_write(Path(path), lambda fh: torch.save(tensor, fh))


def make_info(*, height: int, width: int, fps: float, num_frames: int, video_path: str, start_frame: int) -> dict:
    """The info.json of a sample; ``height``/``width`` of the source video, ``video_path`` its basename."""
    return {
        "height": int(height),
        "width": int(width),
        "fps": float(fps),
        "num_frames": int(num_frames),
        "video_path": os.path.basename(video_path),
        "start_frame": int(start_frame),
    }


def t5_mask() -> torch.Tensor:
    """The reference saves ones, not the tokenizer's attention mask."""
    import torch

    return torch.ones(T5_MAX_LENGTH, dtype=_tensor_dtype())


def write_sample(
    folder: str | os.PathLike,
    prefix: str,
    *,
    info: dict,
    video_latent: torch.Tensor,
    conditioning_latent: torch.Tensor,
    t5_embeddings: torch.Tensor,
) -> None:
    """Write the five files of one sample atomically, info.json last."""
    check_prefix(prefix)
    tensors = {
        VIDEO_LATENT: video_latent,
        CONDITIONING_LATENT: conditioning_latent,
        T5_EMBEDDINGS: t5_embeddings,
        T5_MASK: t5_mask(),
    }
    for suffix, tensor in tensors.items():
        # clone: a view would drag its whole storage (e.g. the batch) into the file
        atomic_torch_save(sample_path(folder, prefix, suffix), tensor.detach().to("cpu", _tensor_dtype()).contiguous().clone())
    atomic_write_text(sample_path(folder, prefix, INFO), json.dumps(info, indent=1) + "\n")


# --- reading and checking --------------------------------------------------------------------
@dataclass(frozen=True)
class SampleShapes:
    """What every sample of a dataset must agree on."""

    video_latent: tuple[int, ...]

    @classmethod
    def for_video(cls, num_frames: int, height: int, width: int) -> "SampleShapes":
        return cls(latent_shape(num_frames, height, width))


def load_tensor(path: Path) -> torch.Tensor:
    import torch

    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise SampleError(f"{path}: cannot be read as a torch tensor ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(tensor, torch.Tensor):
        raise SampleError(f"{path}: holds a {type(tensor).__name__}, not one tensor")
    return tensor


def read_info(path: Path) -> dict:
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SampleError(f"{path}: not readable JSON ({exc})") from exc
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise SampleError(f"{path}: missing keys {missing}")
    return info


def read_sample(folder: str | os.PathLike, prefix: str) -> dict[str, Any]:
    """All five files of a sample: tensors by suffix, and ``info``."""
    out: dict[str, Any] = {s: load_tensor(sample_path(folder, prefix, s)) for s in TENSOR_SUFFIXES}
    out[INFO] = read_info(sample_path(folder, prefix, INFO))
    return out


def list_prefixes(folder: str | os.PathLike) -> dict[str, set[str]]:
    """Map each prefix in ``folder`` to the suffixes present (NeMo's view: ``name.split('.')[0]``)."""
    found: dict[str, set[str]] = {}
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        prefix, _, suffix = entry.name.partition(".")
        found.setdefault(prefix, set()).add(suffix)
    return found


def complete_prefixes(folder: str | os.PathLike) -> list[str]:
    """Prefixes of finished samples (all five files present), sorted."""
    return sorted(p for p, s in list_prefixes(folder).items() if set(SUFFIXES) <= s)


def validate_sample(folder: str | os.PathLike, prefix: str, shapes: SampleShapes | None = None) -> SampleShapes:
    """Check one sample's files, shapes and dtypes; return its shapes. Raises SampleError naming the file."""
    import torch

    data = read_sample(folder, prefix)
    video = data[VIDEO_LATENT]
    if video.dim() != 4 or video.shape[0] != LATENT_CHANNELS:
        raise SampleError(f"{sample_path(folder, prefix, VIDEO_LATENT)}: shape {tuple(video.shape)}, expected (16, T, H, W)")
    expected = {
        VIDEO_LATENT: tuple(video.shape) if shapes is None else shapes.video_latent,
        CONDITIONING_LATENT: tuple(video.shape) if shapes is None else shapes.video_latent,
        T5_EMBEDDINGS: (T5_MAX_LENGTH, T5_DIM),
        T5_MASK: (T5_MAX_LENGTH,),
    }
    for suffix, shape in expected.items():
        tensor = data[suffix]
        path = sample_path(folder, prefix, suffix)
        if tuple(tensor.shape) != tuple(shape):
            raise SampleError(f"{path}: shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if tensor.dtype != _tensor_dtype():
            raise SampleError(f"{path}: dtype {tensor.dtype}, expected {_tensor_dtype()}")
        if not torch.isfinite(tensor.float()).all():
            raise SampleError(f"{path}: holds NaN or infinite values")
    return SampleShapes(tuple(video.shape))


def validate_folder(folder: str | os.PathLike, shapes: SampleShapes | None = None, deep: bool = True) -> list[str]:
    """Check a dataset folder as the trainer needs it; return its sample prefixes.

    Raises SampleError if the folder is missing or empty, a sample lacks a file, a file is not
    part of the format, or (``deep``) a sample's tensors have the wrong shape or dtype.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SampleError(f"{folder}: dataset folder does not exist")
    found = list_prefixes(folder)
    if not found:
        raise SampleError(f"{folder}: dataset folder is empty")
    for prefix, suffixes in sorted(found.items()):
        extra = suffixes - set(SUFFIXES)
        if extra:
            raise SampleError(f"{folder / (prefix + '.' + sorted(extra)[0])}: not a sample file (NeMo reads every file here)")
        missing = set(SUFFIXES) - suffixes
        if missing:
            raise SampleError(f"{sample_path(folder, prefix, sorted(missing)[0])}: missing, sample {prefix!r} is incomplete")
    prefixes = sorted(found)
    if deep:
        for prefix in prefixes:
            shapes = validate_sample(folder, prefix, shapes)
    return prefixes


def chunk_prefix(video_id: str, chunk_index: int) -> str:
    """Prefix of chunk ``chunk_index`` of a video: ``<video_id>_c<index>``, index of 4 digits or more.

    Unique across videos as long as video ids are: the ``_c<digits>`` tail parses back unambiguously.
    """
    return check_prefix(f"{video_id}_c{chunk_index:04d}")


def nbytes_per_sample(num_frames: int, height: int, width: int) -> int:
    """Bytes of one sample's tensors on disk (payload only), for capacity planning."""
    latent = math.prod(latent_shape(num_frames, height, width))
    return 2 * (2 * latent + T5_MAX_LENGTH * T5_DIM + T5_MAX_LENGTH)

