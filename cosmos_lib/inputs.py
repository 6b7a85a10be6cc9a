"""The workflow's inputs: which videos there are, and each video's prompt.

Read once when the workflow is parsed, so it must be cheap for 10,000 videos: one directory scan
and, with instruction datasets, one small JSON read per video. Nothing here opens a video.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .naming import video_ids

INSTRUCTION_KEY = "language_instruction_0"


class InstructionError(ValueError):
    """An instruction file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class VideoInput:
    """One video of the input folder, as the workflow sees it before any job runs."""

    path: str
    prompt: str | None  # None when the prompt could not be read (see ``error``)
    prompt_key: str | None
    instruction_path: str | None = None
    error: str | None = None


def prompt_key(prompt: str, text_encoder: str) -> str:
    """The name of a prompt's embedding file: a hash of the prompt and of the text encoder's source.

    Embedding files are a cache: each is written once and never changes, so a changed prompt or
    text encoder is a new file, and the samples that used the old one are not touched.
    """
    return hashlib.sha256(f"{text_encoder}\n{prompt}".encode("utf-8")).hexdigest()[:20]


def check_prompt(prompt: object, where: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InstructionError(f"{where}: the prompt is empty")
    return prompt


def load_instruction(path: str | os.PathLike) -> str:
    """The prompt of an instruction-dataset video: key ``language_instruction_0`` of ``ID.json``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstructionError(f"{path}: instruction file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InstructionError(f"{path}: instruction file cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InstructionError(f"{path}: instruction file is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or INSTRUCTION_KEY not in data:
        raise InstructionError(f"{path}: instruction file has no key {INSTRUCTION_KEY!r}")
    return check_prompt(data[INSTRUCTION_KEY], f"{path}: {INSTRUCTION_KEY}")


def list_videos(folder: str | os.PathLike) -> list[str]:
    """File names of the ``.mp4`` videos directly in ``folder`` (any case of the extension), sorted."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.name.lower().endswith(".mp4") and not e.name.startswith(".") and not e.is_dir())


def discover_videos(
    folder: str | os.PathLike,
    *,
    prompt: str,
    text_encoder: str,
    instructions: str | os.PathLike | None = None,
    expected: Iterable[str] = (),
) -> dict[str, VideoInput]:
    """Map video id -> VideoInput for every video in ``folder`` and every name in ``expected``.

    ``expected`` names videos that a rule will make (the demo's). With ``instructions``, each
    video's prompt is read from ``instructions/<stem>.json``; a missing or malformed file is kept
    as that video's ``error`` rather than raised, so the other videos go on.
    """
    names = sorted(set(list_videos(folder)) | set(expected))
    ids = video_ids(names)
    videos: dict[str, VideoInput] = {}
    for name in names:
        path = os.path.join(folder, name)
        if not instructions:
            text = check_prompt(prompt, "config key 'prompt'")
            videos[ids[name]] = VideoInput(path, text, prompt_key(text, text_encoder))
            continue
        ipath = os.path.join(instructions, Path(name).stem + ".json")
        try:
            text = load_instruction(ipath)
        except InstructionError as exc:
            videos[ids[name]] = VideoInput(path, None, None, ipath if os.path.exists(ipath) else None, str(exc))
        else:
            videos[ids[name]] = VideoInput(path, text, prompt_key(text, text_encoder), ipath)
    return videos


def videos_of_config(config: dict, demo_videos: Iterable[str] = ()) -> dict[str, VideoInput]:
    """The videos of a workflow config (the same answer for the Snakefile and for a job)."""
    return discover_videos(
        config["videos"],
        prompt=config["prompt"],
        text_encoder=config["text_encoder"],
        instructions=config.get("instructions") or None,
        expected=demo_videos,
    )


def prompts_of(videos: dict[str, VideoInput]) -> dict[str, str]:
    """Each distinct prompt, by its key."""
    return {v.prompt_key: v.prompt for v in videos.values() if v.prompt is not None}
