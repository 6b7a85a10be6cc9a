"""Which chunks of a video become samples: reproducible chunk start frames.

NVIDIA's reference (cosmos1/models/diffusion/nemo/post_training/prepare_dataset.py) draws
``num_chunks`` start frames uniformly from ``[0, n - num_frames]`` with replacement and never
seeds the draw, so a rerun gives other samples. Here the draw is the same ("random") but seeded
from the run's seed and a SHA-256 of the video's key, so that

* a rerun gives the same starts (Python's ``hash()`` is salted per process, SHA-256 is not);
* adding, removing or reordering other videos changes no video's chunks.

"even" is the alternative without repeats: evenly spaced distinct starts from 0 to ``n - num_frames``.
"""

from __future__ import annotations

import hashlib
import random

STRATEGIES = ("random", "even")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rng(seed: int, video_key: str) -> random.Random:
    """A generator that depends only on (seed, video_key); ``random.Random(int)`` is stable across Pythons."""
    digest = hashlib.sha256(f"{seed}\x00{video_key}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest, "big"))


def even_starts(last_start: int, num_chunks: int) -> list[int]:
    """``num_chunks`` distinct starts spread evenly over ``0..last_start`` (all of them if fewer exist)."""
    available = last_start + 1
    if num_chunks >= available:
        return list(range(available))
    if num_chunks == 1:
        return [0]
    gaps = num_chunks - 1
    # round(i * last_start / gaps) in integers; the spacing is >= 1, so the starts are distinct
    return [(2 * i * last_start + gaps) // (2 * gaps) for i in range(num_chunks)]


def chunk_starts(
    num_video_frames: int,
    *,
    num_frames: int,
    num_chunks: int,
    seed: int,
    video_key: str,
    strategy: str = "random",
) -> list[int]:
    """Start frame of each chunk, in chunk-index order; ``[]`` if the video is shorter than one chunk.

    ``random``: ``num_chunks`` uniform draws from ``[0, num_video_frames - num_frames]``, with
    replacement (as the reference), so two chunks may share a start. ``even``: distinct, evenly
    spaced starts from 0 to the last possible start; fewer than ``num_chunks`` if the video has
    fewer possible starts. The result depends only on the arguments, never on other videos.
    """
    if not _is_int(num_video_frames) or num_video_frames < 0:
        raise ValueError(f"num_video_frames must be an integer >= 0, got {num_video_frames!r}")
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if not _is_int(num_chunks) or num_chunks < 1:
        raise ValueError(f"num_chunks must be an integer >= 1, got {num_chunks!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(video_key, str) or not video_key:
        raise ValueError(f"video_key must be a non-empty string, got {video_key!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")

    if num_video_frames < num_frames:
        return []
    last_start = num_video_frames - num_frames
    if strategy == "even":
        return even_starts(last_start, num_chunks)
    rng = _rng(seed, video_key)
    return [rng.randint(0, last_start) for _ in range(num_chunks)]
