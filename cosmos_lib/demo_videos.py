"""Synthetic videos for tests and the demo workflow, and deliberately broken inputs.

Frames are generated one at a time and streamed into PyAV's encoder, so a long or large video
never sits in memory. Every frame differs (shapes move), so the tokenizer latents of different
chunks differ. Files are written under a hidden temporary name and renamed when complete, since
the demo workflow treats the appearance of a video as "new input".

Encoders of the PyAV 18 wheel on this machine (``available_encoders()`` lists them):
libx264 (yuv420p/422p/444p, 10-bit, gray), libx265 (the same plus 12-bit), mpeg4 (yuv420p),
libvpx-vp9 (yuv420p/422p/440p/444p), libsvtav1 (yuv420p, yuv420p10le), ffv1 (lossless, many).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from .sample_format import atomic_write_bytes

#: encoders whose quality is set with a constant rate factor
CRF_CODECS = ("libx264", "libx265", "libvpx-vp9", "libvpx", "libsvtav1")
AUDIO_RATE = 48000


def available_encoders(codecs: Iterable[str] = ("libx264", "libx265", "mpeg4", "libvpx-vp9", "libsvtav1", "libaom-av1", "ffv1")) -> dict[str, list[str]]:
    """Encoder name -> pixel formats it accepts, for the encoders this PyAV build has."""
    found = {}
    for name in codecs:
        try:
            codec = av.Codec(name, "w")
        except Exception:  # noqa: BLE001 - av raises different types for unknown codecs across versions
            continue
        found[name] = [f.name for f in (codec.video_formats or [])]
    return found


def _rate(fps) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    return rate


def synthetic_frames(num_frames: int, width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """RGB uint8 (height, width, 3) frames: a drifting colour gradient under moving discs and boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0.0, 2 * math.pi, size=3).astype(np.float32)
    shapes = []
    for k in range(4):
        shapes.append(
            {
                "disc": k % 2 == 0,
                "size": float(rng.uniform(0.12, 0.3) * min(width, height)),
                "pos": rng.uniform(0, 1, size=2) * (width, height),
                "vel": rng.uniform(-1, 1, size=2) * (width, height) * 0.03,
                "color": rng.integers(0, 256, size=3).astype(np.uint8),
            }
        )
    for t in range(num_frames):
        phase = base + 0.15 * t
        frame = np.empty((height, width, 3), dtype=np.uint8)
        for c in range(3):
            wave = np.sin(xx * (0.05 + 0.02 * c) + yy * 0.03 + phase[c])
            frame[..., c] = (60 + 50 * wave).astype(np.uint8)
        for s in shapes:
            pos = s["pos"] + s["vel"] * t
            # bounce inside the frame: fold the position into [0, size) per axis
            x, y = (abs((p % (2 * m)) - m) if m > 0 else 0.0 for p, m in zip(pos, (width, height)))
            r = s["size"] / 2
            if s["disc"]:
                mask = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
            else:
                mask = (abs(xx - x) <= r) & (abs(yy - y) <= r * 0.6)
            frame[mask] = s["color"]
        yield frame


def write_frames(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps=30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio_first: bool = False,
    crf: int | None = None,
    bitrate: int | None = None,
    faststart: bool = False,
    max_b_frames: int | None = None,
) -> Path:
    """Encode RGB uint8 (H, W, 3) frames, streamed, into ``path`` (container from its suffix).

    ``audio_first`` puts a (quiet sine) AAC audio stream before the video stream, so the video is
    stream 1. ``faststart`` moves the MP4 index to the front (then a file cut short still opens).
    Written under a hidden temporary name in the same folder and renamed when complete.
    """
    path = Path(path)
    rate = _rate(fps)
    if crf is not None and codec not in CRF_CODECS:
        raise ValueError(f"codec {codec} takes no crf (use bitrate); crf works with {CRF_CODECS}")
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    options = {"movflags": "+faststart"} if faststart else {}
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    height, width = first.shape[:2]
    try:
        with av.open(str(tmp), "w", options=options) as container:
            audio = None
            if audio_first:
                audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
            video = container.add_stream(codec, rate=rate)
            video.width, video.height, video.pix_fmt = width, height, pix_fmt
            video.codec_context.time_base = 1 / rate
            opts = {}
            if crf is not None:
                opts["crf"] = str(crf)
                if codec.startswith("libvpx"):
                    opts["b"] = "0"  # constant quality mode of libvpx
            if codec == "libx265":
                opts["x265-params"] = "log-level=error"
            if max_b_frames is not None:
                opts["bf"] = str(max_b_frames)
            video.options = opts
            if bitrate is not None:
                video.bit_rate = int(bitrate)

            audio_done = 0
            index = 0
            for index, image in enumerate(_chain(first, frames)):
                if image.shape[:2] != (height, width) or image.dtype != np.uint8:
                    raise ValueError(f"{path}: frame {index} is {image.shape} {image.dtype}, expected ({height}, {width}, 3) uint8")
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = index
                frame.time_base = 1 / rate
                if audio is not None:
                    audio_done = _write_audio(container, audio, audio_done, int((index + 1) / rate * AUDIO_RATE))
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            if audio is not None:
                container.mux(audio.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _chain(first, rest):
    yield first
    yield from rest


def _write_audio(container, stream, done: int, until: int) -> int:
    """Encode audio samples ``done..until`` (a quiet 440 Hz tone); returns ``until``."""
    if until <= done:
        return done
    t = np.arange(done, until, dtype=np.float32) / AUDIO_RATE
    samples = (0.1 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = AUDIO_RATE
    frame.pts = done
    frame.time_base = Fraction(1, AUDIO_RATE)
    container.mux(stream.encode(frame))
    return until


def write_video(
    path: str | os.PathLike,
    *,
    num_frames: int,
    width: int,
    height: int,
    fps=30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    seed: int = 0,
    audio_first: bool = False,
    crf: int | None = None,
    bitrate: int | None = None,
    faststart: bool = False,
    max_b_frames: int | None = None,
) -> Path:
    """Write a synthetic video of moving coloured shapes (see ``synthetic_frames``); returns the path."""
    if num_frames < 1 or width < 1 or height < 1:
        raise ValueError(f"{path}: need num_frames, width and height >= 1, got {num_frames}, {width}, {height}")
    return write_frames(
        path,
        synthetic_frames(num_frames, width, height, seed),
        fps=fps,
        codec=codec,
        pix_fmt=pix_fmt,
        audio_first=audio_first,
        crf=crf,
        bitrate=bitrate,
        faststart=faststart,
        max_b_frames=max_b_frames,
    )


def _middle_of_a_packet(path: Path) -> int:
    """A byte offset inside the data of the video's middle packet: cutting there always leaves one
    packet half-written (cutting at half the file size sometimes fell on a packet boundary).
    The video has no B-frames, so every frame before the cut decodes from intact references."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size and p.pos is not None]
    pos, size = packets[len(packets) // 2]
    return pos + max(1, size // 2)


def write_bad_inputs(folder: str | os.PathLike) -> dict[str, Path]:
    """Broken "videos" in ``folder``; name -> path.

    * ``empty``: a 0-byte ``empty.mp4``
    * ``truncated``: a valid MP4 (index at the front) cut in the middle of its frame data: it
      opens, then decoding fails part-way
    * ``truncated_no_index``: a valid MP4 with its index at the end, cut in the middle: it does not open
    * ``not_a_video``: a text file named ``not_a_video.mp4``
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["empty"] = folder / "empty.mp4"
    atomic_write_bytes(out["empty"], b"")
    for name, faststart in (("truncated", True), ("truncated_no_index", False)):
        full = write_video(folder / f".{name}_full.mp4", num_frames=40, width=64, height=48, seed=7, faststart=faststart, max_b_frames=0)
        data = full.read_bytes()
        cut = _middle_of_a_packet(full)
        full.unlink()
        out[name] = folder / f"{name}.mp4"
        atomic_write_bytes(out[name], data[:cut])
    out["not_a_video"] = folder / "not_a_video.mp4"
    atomic_write_bytes(out["not_a_video"], b"This is a text file, not a video.\n" * 20)
    return out

