"""Encode jobs through the workflow on one GPU: the encode worker (the tokenizer loaded once per
run, or per SLURM group job) against a tokenizer loaded by every job (encode.worker_idle_seconds 0),
with an eager and with a compiled tokenizer.

    python benchmarks/encode_jobs.py                 # real-size CV8x8x8 tokenizer (random weights), GPU
    python benchmarks/encode_jobs.py --small         # a smoke run on the CPU with tiny models

It makes N short 720p H.264 videos (robot clips are often a few seconds long: there the cost a job
pays before its first chunk matters most), then for each mode runs `snakemake all` on them in a
fresh results folder (the T5 prompt job and the model manifests done beforehand, not timed).
Per mode it prints the time from the first encode job's start to the last one's end (Snakemake's
job records), videos per second, the time the jobs spent encoding chunks (their logs: compiling
included) and the time per video around that (Snakemake's job start, the job process, the
tokenizer load). Writes benchmarks/results/encode_jobs.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from preprocess import PROMPT, make_video, save_tokenizer  # noqa: E402  (benchmarks/preprocess.py)

from cosmos_lib import tiny_models  # noqa: E402

MODES = {  # name -> (worker_idle_seconds, compile)
    "worker eager": (60, False),
    "per-job eager": (0, False),
    "worker compiled": (60, True),
    "per-job compiled": (0, True),
}


def snakemake(run: Path, config: Path, *args: str) -> tuple[float, str]:
    """Wall seconds and output of one Snakemake run (kept in run/snakemake_<target>.log)."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(run),
               "--configfile", str(config), "--cores", str(os.cpu_count()), "--scheduler", "greedy", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    (run / f"snakemake_{args[-1]}.log").write_text(output)
    if done.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed in {run}:\n{output[-6000:]}")
    return time.perf_counter() - start, output


def job_span_s(output: str) -> float:
    """Seconds from the start of the first encode_video job to the end of the last one, from
    Snakemake's own job records ("[<date>]" lines; whole seconds)."""
    stamp, starts, ends = None, [], []
    for line in output.splitlines():
        if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]", line.strip()):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif re.match(r"\s*(local)?rule encode_video:", line):
            starts.append(stamp)
        elif re.search(r"Finished jobid: \d+ \(Rule: encode_video\)", line):
            ends.append(stamp)
    return (max(ends) - min(starts)).total_seconds()


def job_figures(run: Path) -> dict:
    """From the encode_video logs: tokenizer loads, and seconds spent encoding chunks."""
    loads = encode_s = chunks = 0
    for path in (run / "logs" / "encode_video").glob("*.log"):
        text = path.read_text()
        loads += text.count("tokenizer loaded") or ("encode worker" not in text)
        for done, rate in re.findall(r"(\d+)/\d+ chunks done, ([\d.]+) samples/s", text)[-1:]:
            chunks += int(done)
            encode_s += int(done) / float(rate)
    return {"tokenizer_loads": loads, "chunks": chunks, "encode_video_s": round(encode_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny models, small frames, CPU")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each video")
    parser.add_argument("--num-chunks", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--work", default="", help="working folder (default: a temporary one)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "encode_jobs.json"))
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="encode_jobs_"))
    (work / "videos").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vae = save_tokenizer(work, args.small)
    t5 = tiny_models.save_tiny_t5(work / "t5")  # the prompt job is not what is measured
    width, height = (160, 96) if args.small else (1280, 720)
    for i in range(args.videos):
        make_video(work / "videos" / f"clip{i:03d}.mp4", args.seconds, width, height)
    print(f"inputs made in {time.perf_counter() - t0:.1f} s in {work}", flush=True)

    results = {}
    for mode in args.modes.split(","):
        idle, compile_ = MODES[mode]
        run = work / re.sub(r"\W+", "_", mode)
        run.mkdir()
        config = run / "config.yaml"
        config.write_text(json.dumps({
            "demo": False, "videos": str(work / "videos"), "prompt": PROMPT, "instructions": "",
            "num_chunks": args.num_chunks, "num_frames": 121,
            "height": 64 if args.small else 704, "width": 96 if args.small else 1280,
            "tokenizer": str(vae), "text_encoder": str(t5),
            "encode": {"batch_size": args.batch_size, "device": "cpu" if args.small else "cuda", "compile": compile_,
                       "worker_idle_seconds": idle},
        }))
        snakemake(run, config, "--until", "encode_prompts")
        wall, output = snakemake(run, config, "all")
        span = job_span_s(output)
        figures = job_figures(run)
        results[mode] = {
            "snakemake_wall_s": round(wall, 1), "encode_jobs_s": span, "videos_per_s": round(args.videos / span, 3),
            "overhead_per_video_s": round((span - figures["encode_video_s"]) / args.videos, 2), **figures,
        }
        print(f"{mode:>17}: encode jobs {span:5.0f} s for {args.videos} videos ({args.videos / span:.3f} videos/s; "
              f"`snakemake all` {wall:.0f} s), {figures['tokenizer_loads']} tokenizer load(s), "
              f"{figures['encode_video_s']:.1f} s encoding chunks, {results[mode]['overhead_per_video_s']:.2f} s "
              "per video around them", flush=True)
        write_results(args, width, height, results)  # after every mode: a cut-off run keeps what it measured


def write_results(args: argparse.Namespace, width: int, height: int, results: dict) -> None:
    import torch

    out = {
        "date": datetime.date.today().isoformat(),
        "command": "python3 " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
        "hardware": {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                     "cpu_cores": os.cpu_count(), "platform": platform.platform()},
        "torch": torch.__version__,
        "videos": {"count": args.videos, "seconds": args.seconds, "width": width, "height": height, "codec": "h264"},
        "num_chunks": args.num_chunks, "batch_size": args.batch_size, "results": results,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
