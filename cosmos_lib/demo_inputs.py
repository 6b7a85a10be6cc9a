"""The built-in demo's inputs: short synthetic videos (some of them bad on purpose) and tiny models.

The demo workflow makes these itself, so that one command on a fresh machine shows every path of
the workflow: normal videos, awkward names, a video too short for a chunk and a broken file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoVideo:
    name: str
    num_frames: int
    width: int = 160
    height: int = 120
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    broken: bool = False  # written, then cut in the middle


DEMO_VIDEOS = (
    DemoVideo("robot_arm.mp4", 150),
    DemoVideo("pick and place.take 2.mp4", 135, width=176, height=100, pix_fmt="yuv444p"),
    DemoVideo("café_séance.mp4", 125, codec="libx264", pix_fmt="gray"),
    DemoVideo("too_short.mp4", 60),
    DemoVideo("broken.mp4", 150, broken=True),
)


def video_names() -> list[str]:
    """The demo's video file names (they are made by the rule ``demo_video``)."""
    return [v.name for v in DEMO_VIDEOS]


def demo_video(name: str) -> DemoVideo:
    for video in DEMO_VIDEOS:
        if video.name == name:
            return video
    raise KeyError(f"{name!r} is not a demo video")


def make_demo_video(path: str | os.PathLike, seed: int = 0) -> None:
    """Write one demo video (atomically), cut in the middle if it is the broken one."""
    from .demo_videos import write_video

    spec = demo_video(Path(path).name)
    write_video(
        path,
        num_frames=spec.num_frames,
        width=spec.width,
        height=spec.height,
        codec=spec.codec,
        pix_fmt=spec.pix_fmt,
        seed=seed + DEMO_VIDEOS.index(spec),
    )
    if spec.broken:
        data = Path(path).read_bytes()
        tmp = Path(path).with_name("." + Path(path).name + ".cut")
        tmp.write_bytes(data[: len(data) // 2])
        os.replace(tmp, path)
