"""Video file names -> sample ids: no dots (NeMo splits sample names at the first dot), unique, stable.

A clean stem (ASCII letters, digits, '_' and '-', not starting with '-') is its own id. Any other
stem is transliterated to ASCII, every other character becomes '_', and an 8-hex-digit hash of
the original stem is appended, so two names that clean to the same text stay apart. The id
depends on the file's own name only: adding or removing other videos never renames a sample.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

_CLEAN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_STEM = 80


def video_id(name: str | Path) -> str:
    """The sample id of a video, from its file name (the ``.mp4`` extension is dropped)."""
    stem = Path(name).name
    if stem.lower().endswith(".mp4"):
        stem = stem[: -len(".mp4")]
    if not stem:
        raise ValueError(f"{name!r}: empty video name")
    if _CLEAN.match(stem) and len(stem) <= _MAX_STEM and not _looks_hashed(stem):
        return stem
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", ascii_stem).strip("_-")[:_MAX_STEM] or "video"
    digest = hashlib.sha256(stem.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def _looks_hashed(stem: str) -> bool:
    """A clean stem that itself ends like a hashed id keeps apart by getting a hash of its own."""
    return re.search(r"-[0-9a-f]{8}$", stem) is not None


def video_ids(names: list[str]) -> dict[str, str]:
    """Map each video name to its id; raise if two names still meet (the file names are then listed)."""
    seen: dict[str, str] = {}
    for name in names:
        vid = video_id(name)
        if vid in seen:
            raise ValueError(f"videos {seen[vid]!r} and {name!r} map to the same sample id {vid!r}: rename one")
        seen[vid] = name
    return {name: vid for vid, name in seen.items()}
