"""The flat dataset folder NeMo reads, kept in step with the per-video sample folders.

Each video job writes its samples into its own folder; this module hard-links them into one flat
folder (a copy where links are not possible) and touches only what changed: a new or re-encoded
video's samples are linked, samples of videos that are gone are removed, everything else stays.
The folder never holds anything but finished samples: links are made under hidden temporary
names and renamed, info.json last, and leftovers of an interrupted run are cleaned first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path

from . import sample_format

log = logging.getLogger("cosmos_lib.dataset")

SUMMARY_COLUMNS = ("video", "video_id", "status", "samples", "reason")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def _place(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def read_reports(paths: list[str | Path]) -> list[dict]:
    reports = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            reports.append(json.load(fh))
    return reports


def sync_dataset(reports: list[dict], samples_dir: str | Path, dataset_dir: str | Path) -> dict:
    """Make ``dataset_dir`` hold exactly the samples the reports list; return counts of what changed."""
    samples_dir, dataset_dir = Path(samples_dir), Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    existing = {}
    for entry in os.scandir(dataset_dir):
        if entry.name.startswith("."):  # a temporary name left by an interrupted run
            os.unlink(entry.path)
        else:
            existing[entry.name] = entry
    wanted: set[str] = set()
    linked = 0
    for report in reports:
        for prefix in report.get("samples", []):
            names = [f"{prefix}.{s}" for s in sample_format.SUFFIXES]  # info.json last
            wanted.update(names)
            src_dir = samples_dir / report["video_id"]
            info = names[-1]
            if info in existing and _same_file(os.stat(existing[info].path), os.stat(src_dir / info)):
                continue  # info.json is placed last: if it is current, so is the rest of the sample
            for name in names:
                _place(src_dir / name, dataset_dir / name)
            linked += 1
    removed = 0
    for name in sorted(set(existing) - wanted):
        os.unlink(dataset_dir / name)
        removed += 1
    counts = {"samples": sum(len(r.get("samples", [])) for r in reports), "linked": linked, "files_removed": removed}
    log.info("dataset %s: %d samples (%d newly linked, %d stale files removed)", dataset_dir, counts["samples"], linked, removed)
    return counts


def summary_rows(reports: list[dict]) -> list[dict]:
    return [
        {
            "video": r["video"],
            "video_id": r["video_id"],
            "status": r["status"],
            "samples": len(r.get("samples", [])),
            "reason": r.get("reason", ""),
        }
        for r in sorted(reports, key=lambda r: r["video_id"])
    ]


def summary_tsv(reports: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SUMMARY_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(reports))
    return out.getvalue()


def manifest(reports: list[dict], dataset_dir: str | Path) -> dict:
    by_status: dict[str, int] = {}
    for r in reports:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {
        "dataset": str(dataset_dir),
        "num_samples": sum(len(r.get("samples", [])) for r in reports),
        "num_videos": len(reports),
        "videos_by_status": by_status,
        "samples_per_video": {r["video_id"]: len(r.get("samples", [])) for r in reports},
    }
