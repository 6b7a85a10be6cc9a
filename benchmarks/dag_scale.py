"""How long Snakemake needs to plan the preprocessing of many videos (no job or DAG node per chunk).

    python benchmarks/dag_scale.py --videos 10000 --num-chunks 500

Makes a folder of empty placeholder .mp4 files (a dry run opens none of them), then times
`snakemake -n dataset` over it, with one prompt for all and with a per-video instruction file each.
Then it times the planning of one video's encode job among them (`snakemake -n` of its report):
what each Snakemake process of a cluster job pays (the group job's, and each video's job step's)
before any work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=10000)
    parser.add_argument("--num-chunks", type=int, default=500)
    args = parser.parse_args()
    snakemake = Path(sys.executable).with_name("snakemake")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos, instructions = Path(tmp) / "videos", Path(tmp) / "instructions"
        videos.mkdir()
        instructions.mkdir()
        for i in range(args.videos):
            name = f"episode {i:05d}.take.mp4" if i % 2 else f"episode_{i:05d}.mp4"
            (videos / name).write_bytes(b"")
            (instructions / (Path(name).stem + ".json")).write_text(json.dumps({"language_instruction_0": f"task {i % 97}"}))
        cases = [("dataset", "one prompt", []), ("dataset", "instructions", [f"instructions={instructions}"]),
                 ("results/reports/episode_00000.json", "one video's job", [])]
        for target, label, extra in cases:
            workdir = Path(tmp) / ("run_" + label.replace(" ", "_").replace("'", ""))
            workdir.mkdir()
            cmd = [
                str(snakemake), target, "-n", "-q", "--cores", "1", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                "--configfile", str(REPO / "config" / "config.yaml"),
                "--config", f"videos={videos}", f"num_chunks={args.num_chunks}", *extra,
            ]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                sys.exit(f"snakemake failed:\n{done.stdout}\n{done.stderr}")
            rows.append((label, seconds))
    print(f"snakemake -n, {args.videos} videos, num_chunks {args.num_chunks}")
    print(f"{'target':<16} {'seconds':>8}")
    for label, seconds in rows:
        print(f"{label:<16} {seconds:8.1f}")


if __name__ == "__main__":
    main()
