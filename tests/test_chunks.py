"""cosmos_lib.chunks: reproducible, per-video chunk starts."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from cosmos_lib.chunks import chunk_starts, even_starts

ARGS = dict(num_frames=121, num_chunks=8, seed=1234)


def test_random_is_reproducible_and_depends_on_seed_and_key():
    a = chunk_starts(1000, video_key="cam/a.mp4", **ARGS)
    assert a == chunk_starts(1000, video_key="cam/a.mp4", **ARGS)
    assert len(a) == 8
    assert a != chunk_starts(1000, video_key="cam/b.mp4", **ARGS)
    assert a != chunk_starts(1000, video_key="cam/a.mp4", num_frames=121, num_chunks=8, seed=1235)


def test_random_is_the_same_in_another_process():
    """Python's hash() is salted per process; the starts must not be."""
    code = (
        "from cosmos_lib.chunks import chunk_starts;"
        "print(chunk_starts(1000, num_frames=121, num_chunks=8, seed=1234, video_key='cam/a.mp4'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "random"}, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.stdout.strip() == str(chunk_starts(1000, video_key="cam/a.mp4", **ARGS))


def test_one_video_is_independent_of_the_others():
    keys = [f"v{i:03d}" for i in range(20)]
    alone = {k: chunk_starts(500, video_key=k, **ARGS) for k in keys}
    # a different set and order of videos, and other videos computed in between
    for k in reversed(keys + ["new1", "new2"]):
        chunk_starts(700, video_key=k + "x", **ARGS)
        if k in alone:
            assert chunk_starts(500, video_key=k, **ARGS) == alone[k]


def test_random_stays_in_range_and_covers_it():
    n, num_frames = 140, 121
    seen = set()
    for i in range(200):
        starts = chunk_starts(n, num_frames=num_frames, num_chunks=5, seed=i, video_key="v")
        assert all(0 <= s <= n - num_frames for s in starts)
        assert all(isinstance(s, int) for s in starts)
        seen.update(starts)
    assert seen == set(range(n - num_frames + 1))  # both ends reachable, nothing outside


def test_random_draws_with_replacement():
    # 3 possible starts, 10 chunks: repeats are unavoidable and the chunk count is kept
    starts = chunk_starts(123, num_frames=121, num_chunks=10, seed=0, video_key="v")
    assert len(starts) == 10
    assert set(starts) <= {0, 1, 2}
    assert max(Counter(starts).values()) > 1
    # and repeats happen even when distinct starts would have been possible
    many = [chunk_starts(200, num_frames=121, num_chunks=12, seed=s, video_key="v") for s in range(50)]
    assert any(len(set(m)) < len(m) for m in many)


def test_even_is_evenly_spaced_and_distinct():
    starts = chunk_starts(1000, num_frames=121, num_chunks=5, seed=0, video_key="v", strategy="even")
    assert starts == [0, 220, 440, 659, 879]  # round(i * 879 / 4)
    assert starts[-1] == 1000 - 121
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) - min(gaps) <= 1
    # independent of seed and key
    assert starts == chunk_starts(1000, num_frames=121, num_chunks=5, seed=9, video_key="w", strategy="even")


def test_even_returns_fewer_chunks_when_fewer_starts_exist():
    assert chunk_starts(124, num_frames=121, num_chunks=10, seed=0, video_key="v", strategy="even") == [0, 1, 2, 3]
    for last in range(0, 40):
        for k in range(1, 45):
            starts = even_starts(last, k)
            assert len(starts) == min(k, last + 1)
            assert starts == sorted(set(starts))
            assert starts[0] == 0 and all(0 <= s <= last for s in starts)
            if k > 1:
                assert starts[-1] == last


def test_short_video_gives_no_chunks():
    for strategy in ("random", "even"):
        assert chunk_starts(120, num_frames=121, num_chunks=4, seed=0, video_key="v", strategy=strategy) == []
        assert chunk_starts(0, num_frames=121, num_chunks=4, seed=0, video_key="v", strategy=strategy) == []


def test_video_exactly_one_chunk_long():
    assert chunk_starts(121, num_frames=121, num_chunks=3, seed=0, video_key="v") == [0, 0, 0]
    assert chunk_starts(121, num_frames=121, num_chunks=3, seed=0, video_key="v", strategy="even") == [0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_video_frames=-1), "num_video_frames"),
        (dict(num_video_frames=10.0), "num_video_frames"),
        (dict(num_frames=0), "num_frames"),
        (dict(num_chunks=0), "num_chunks"),
        (dict(num_chunks=True), "num_chunks"),
        (dict(seed="1"), "seed"),
        (dict(video_key=""), "video_key"),
        (dict(video_key=None), "video_key"),
        (dict(strategy="uniform"), "strategy"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = dict(num_video_frames=300, num_frames=121, num_chunks=2, seed=0, video_key="v")
    args.update(kwargs)
    n = args.pop("num_video_frames")
    with pytest.raises(ValueError, match=match):
        chunk_starts(n, **args)
