"""Preprocessing speed on one GPU: our encode job beside a baseline that does what NVIDIA's
reference prepare_dataset.py does, on a realistic video the script makes itself.

    python benchmarks/preprocess.py                 # real-size models (random weights), one GPU
    python benchmarks/preprocess.py --small         # a smoke run on the CPU with tiny models

Real-size models with random weights: the Cosmos CV8x8x8 tokenizer (diffusers
AutoencoderKLCosmos at its default, the CV8x8x8 architecture, saved and loaded through our
loader) and the T5-11B encoder (T5EncoderModel with t5-11b's configuration). The video is 1080p
H.264 at 30 fps, high bitrate. Prints a table and writes benchmarks/results/preprocess.json.

Baseline, as the reference: the whole video decoded into RAM, each chunk resized on the CPU,
two batch-1 tokenizer passes per chunk (video, conditioning), the prompt encoded again for
every chunk with T5 in float32. Ours: cosmos_lib.preprocess.encode_prompts once (bf16) and
cosmos_lib.preprocess.encode_video (streamed decode in a thread, GPU resize, batched
tokenizer calls, one batch in flight).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cosmos_lib import sample_format  # noqa: E402
from cosmos_lib.chunks import chunk_starts  # noqa: E402
from cosmos_lib.preprocess import EncodeSettings, conditioning_clip, encode_prompts, encode_video  # noqa: E402
from cosmos_lib.text_encoder import TextEncoder  # noqa: E402
from cosmos_lib.tokenizer import VideoTokenizer  # noqa: E402
from cosmos_lib.video import iter_decoded, iter_frames, probe  # noqa: E402

PROMPT = "A video of sks teal robot picking up a red cube and placing it in a box."
T5_11B = dict(d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128, vocab_size=32128,
              feed_forward_proj="relu", relative_attention_num_buckets=32)


# --- inputs ----------------------------------------------------------------------------------
def make_video(path: Path, seconds: float, width: int, height: int, fps: int = 30, bitrate: int = 25_000_000) -> None:
    """A busy 1080p H.264 video: textured background panning, moving blocks, sensor noise."""
    import av

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 2 * fps, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:height]
    noise = rng.integers(0, 24, size=(4, height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"preset": "veryfast"}
        stream.thread_type = "AUTO"
        for t in range(int(seconds * fps)):
            shift = (t * 4) % (texture.shape[1] - width)
            frame = texture[:, shift:shift + width] + noise[t % 4]
            x = (t * 13) % (width - 200)
            frame[200:400, x:x + 200] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def save_tokenizer(work: Path, small: bool) -> Path:
    """The CV8x8x8 tokenizer with random weights, saved as a diffusers folder (read by our loader)."""
    from cosmos_lib import tiny_models

    if small:
        return tiny_models.save_tiny_tokenizer_diffusers(work / "vae")
    from diffusers import AutoencoderKLCosmos

    torch.manual_seed(0)
    model = AutoencoderKLCosmos()  # default configuration: the CV8x8x8 architecture
    model.register_to_config(latents_mean=list(np.linspace(-0.5, 0.5, 256)), latents_std=list(np.linspace(0.5, 1.5, 256)))
    model.save_pretrained(work / "vae")
    return work / "vae"


def build_models(work: Path, vae: Path, small: bool, device: torch.device, compile_tokenizer: bool):
    """Tokenizer (eager and, if asked, compiled) and T5 (bf16 and float32) with random weights."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from cosmos_lib import tiny_models

    t5_folder = tiny_models.save_tiny_t5(work / "tiny_t5")  # its sentencepiece tokenizer stands in for T5's
    if small:
        t5_fp32 = T5EncoderModel.from_pretrained(t5_folder).to(device)
    else:
        with torch.device("meta"):  # allocate on the GPU and fill there: CPU init of 4.9B params takes minutes
            t5_fp32 = T5EncoderModel(T5Config(**T5_11B))
        t5_fp32 = t5_fp32.to_empty(device=device)
        for param in t5_fp32.parameters():
            param.data.normal_(0.0, 0.01)
    t5_fp32.eval().requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(t5_folder)
    t5_bf16 = None if small else copy.deepcopy(t5_fp32).to(torch.bfloat16)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    text_fp32 = TextEncoder(t5_fp32, tok, device=device, dtype=torch.float32, folder=t5_folder)
    text_ours = TextEncoder(t5_bf16 or t5_fp32, tok, device=device, dtype=dtype, folder=t5_folder)
    eager = VideoTokenizer.load(vae, device=device, dtype=dtype)
    compiled = {}
    if compile_tokenizer:
        # one compiled variant only: a second compiled instance of the same module makes dynamo
        # recompile the first when they alternate (channels_last_3d measured 166 TFLOP/s, slower)
        compiled["compiled"] = VideoTokenizer.load(vae, device=device, dtype=dtype, compile=True)
    return eager, compiled, text_fp32, text_ours


# --- GPU busy ---------------------------------------------------------------------------------
class GpuBusy:
    """Samples nvidia-smi's utilisation (share of time a kernel ran) while a block runs."""

    def __init__(self, period_ms: int = 100):
        self.period_ms, self.samples, self.proc = period_ms, [], None

    def __enter__(self):
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"-lms={self.period_ms}"],
                stdout=subprocess.PIPE, text=True,
            )
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip().split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.thread.join(timeout=2)

    @property
    def fraction(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the two pipelines ------------------------------------------------------------------------
def run_ours(video: Path, out: Path, tokenizer, text, settings: EncodeSettings, device) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    sync(device)
    start = time.perf_counter()
    with GpuBusy() as busy:
        encode_prompts(text, {"p": PROMPT}, out / "text")
        t5 = torch.load(out / "text" / "p.pth")
        report = encode_video(video, "bench", out_dir=out / "samples", tokenizer=tokenizer, t5_embeddings=t5, settings=settings)
        sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": len(report["samples"]), "samples_per_s": len(report["samples"]) / seconds,
            "gpu_busy_fraction": busy.fraction}


def run_reference(video: Path, out: Path, tokenizer, text_fp32, settings: EncodeSettings, device) -> dict:
    """What prepare_dataset.py does, step for step (the model calls are ours, the schedule is its)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sync(device)
    start = time.perf_counter()
    with GpuBusy() as busy:
        frames = list(iter_frames(video))  # the whole video in RAM
        info = probe(video)
        starts = chunk_starts(len(frames), num_frames=settings.num_frames, num_chunks=settings.num_chunks,
                              seed=settings.seed, video_key="bench", strategy="random")
        for index, s in enumerate(starts):
            clip = torch.from_numpy(np.stack(frames[s:s + settings.num_frames])).permute(0, 3, 1, 2).float()
            clip = F.interpolate(clip, size=(settings.height, settings.width), mode="bilinear", antialias=True)  # CPU
            clip = (clip / 127.5 - 1).permute(1, 0, 2, 3)[None].to(device)
            video_latent = tokenizer.encode(clip)[0]
            cond_latent = tokenizer.encode(conditioning_clip(clip[0], settings.conditioning_frames)[None])[0]
            t5 = text_fp32.encode([PROMPT])[0]  # again for every chunk, float32
            sample_format.write_sample(
                out, sample_format.chunk_prefix("bench", index),
                info=sample_format.make_info(height=info.height, width=info.width, fps=info.fps,
                                             num_frames=settings.num_frames, video_path=str(video), start_frame=s),
                video_latent=video_latent, conditioning_latent=cond_latent, t5_embeddings=t5,
            )
        sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": len(starts), "samples_per_s": len(starts) / seconds, "gpu_busy_fraction": busy.fraction}


# --- tokenizer throughput ---------------------------------------------------------------------
def tokenizer_flops_per_clip(tokenizer, settings, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    clip = torch.zeros(1, 3, settings.num_frames, settings.height, settings.width, device=device)
    with FlopCounterMode(display=False) as counter:
        tokenizer.encode(clip)
    return float(counter.get_total_flops())


def time_tokenizer(tokenizer, clips_per_call: int, settings, device, repeats: int) -> float:
    """Seconds per clip at a batch of ``clips_per_call`` clips (after warm-up calls)."""
    x = torch.rand(clips_per_call, 3, settings.num_frames, settings.height, settings.width, device=device) * 2 - 1
    for _ in range(2):
        tokenizer.encode(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        tokenizer.encode(x)
    sync(device)
    return (time.perf_counter() - start) / repeats / clips_per_call


# --- peak host memory of one encode job, in a child process ------------------------------------
def _child(queue, video, out, vae, settings, device_type):
    device = torch.device(device_type)
    tokenizer = VideoTokenizer.load(vae, device=device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = encode_video(video, "mem", out_dir=out, tokenizer=tokenizer, t5_embeddings=torch.zeros(512, 1024), settings=settings)
    queue.put({"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "rss_before_encode_gib": before / 2**20, "samples": len(report["samples"])})


def peak_memory(video, out, vae, settings, device) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, video, out, vae, settings, device.type))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny models, small video, CPU: a smoke run")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--long-seconds", type=float, default=120)
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2, help="chunks per tokenizer call in our job")
    parser.add_argument("--compile", action="store_true", help="torch.compile our tokenizer")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "preprocess.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    width, height = (320, 240) if args.small else (1920, 1080)
    settings = EncodeSettings(num_frames=121, height=64 if args.small else 704, width=96 if args.small else 1280,
                              num_chunks=args.chunks, seed=0, batch_size=args.batch_size)
    result: dict = {"date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "hardware": {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                                 "cpu_cores": os.cpu_count(), "platform": platform.platform()},
                    "torch": torch.__version__, "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
                    "compile": args.compile}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        video, long_video = work / "video_short.mp4", work / "video_long.mp4"
        make_video(video, args.seconds, width, height)
        result["video"] = {"seconds": args.seconds, "width": width, "height": height, "fps": 30, "codec": "h264",
                           "bytes": video.stat().st_size, "made_in_s": round(time.perf_counter() - t, 1)}
        make_video(long_video, args.long_seconds, width, height)
        print(f"videos made in {time.perf_counter() - t:.1f}s", flush=True)

        # what decoding alone costs (one thread: the decoder's pool, then swscale to RGB)
        t = time.perf_counter()
        n = sum(1 for _ in iter_decoded(video))
        decode_fps = n / (time.perf_counter() - t)
        t = time.perf_counter()
        n = sum(1 for _ in iter_frames(video))
        result["decode_fps"] = {"decode_only": decode_fps, "decode_and_rgb": n / (time.perf_counter() - t)}
        print("decode", result["decode_fps"], flush=True)

        # peak host memory of an encode job, in child processes before this one holds the GPU
        vae = save_tokenizer(work, args.small)
        mem = {}
        for label, path in [(f"{args.seconds:g}s", video), (f"{args.long_seconds:g}s", long_video)]:
            mem[label] = peak_memory(path, work / f"mem_{label}", vae, settings, device)
            print("memory", label, mem[label], flush=True)
        result["peak_host_memory_gib"] = mem
        result["reference_frames_in_ram_gib_short"] = n * width * height * 3 / 2**30
        write(args.out, result)

        eager, compiled, text_fp32, text_ours = build_models(work, vae, args.small, device, args.compile)
        print("models built", flush=True)

        # tokenizer throughput: FLOPs per clip, then seconds per clip by batch and mode
        flops = tokenizer_flops_per_clip(eager, settings, device)
        result["tokenizer_tflop_per_clip"] = flops / 1e12
        sweep = {}
        runs = [("eager", eager, c) for c in sorted({1, 2, 2 * args.batch_size})]
        # compiled: one shape only, each new shape compiles again (about a minute)
        runs += [(name, tok, 2 * args.batch_size) for name, tok in compiled.items()]
        for name, tok, clips in runs:
            try:
                per_clip = time_tokenizer(tok, clips, settings, device, repeats=1 if args.small else 3)
                sweep[f"{name}_batch{clips}"] = {"s_per_clip": per_clip, "tflops": flops / per_clip / 1e12}
            except torch.OutOfMemoryError:
                sweep[f"{name}_batch{clips}"] = "out of memory"
                torch.cuda.empty_cache()
            print(name, clips, sweep[f"{name}_batch{clips}"], flush=True)
        result["tokenizer_sweep"] = sweep
        # our job uses the fastest tokenizer variant at its batch shape
        candidates = {"eager": eager, **compiled}
        timed = {n: sweep[f"{n}_batch{2 * args.batch_size}"] for n in candidates}
        best = min((n for n in timed if isinstance(timed[n], dict)), key=lambda n: timed[n]["s_per_clip"])
        ours_tok = candidates[best]
        result["ours_tokenizer"] = best
        result["tokenizer_tflops"] = timed[best]["tflops"]
        write(args.out, result)

        result["reference"] = run_reference(video, work / "ref", eager, text_fp32, settings, device)
        print("reference", result["reference"], flush=True)
        del text_fp32
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if ours_tok is not eager:  # the same job with the eager tokenizer (no compile time to amortise)
            result["ours_eager"] = run_ours(video, work / "ours_eager", eager, text_ours, settings, device)
            print("ours, eager tokenizer", result["ours_eager"], flush=True)
        result["ours"] = run_ours(video, work / "ours", ours_tok, text_ours, settings, device)
        print("ours", result["ours"], flush=True)
        result["speedup_vs_reference"] = result["ours"]["samples_per_s"] / result["reference"]["samples_per_s"]
        write(args.out, result)

        # where the time goes in our job: a profiled second run
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            run_ours(video, work / "ours_profiled", ours_tok, text_ours, settings, device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        table_text = prof.key_averages().table(sort_by=sort, row_limit=25)
        Path(args.out).with_name("preprocess_profile.txt").write_text(table_text)
        result["profile"] = Path(args.out).with_name("preprocess_profile.txt").name

    table = [
        ("samples/s, ours", f"{result['ours']['samples_per_s']:.2f}"),
        ("samples/s, reference-style", f"{result['reference']['samples_per_s']:.2f}"),
        ("speedup_vs_reference", f"{result['speedup_vs_reference']:.2f}"),
        ("gpu_busy_fraction, ours", str(result["ours"]["gpu_busy_fraction"])),
        ("gpu_busy_fraction, reference", str(result["reference"]["gpu_busy_fraction"])),
        ("tokenizer TFLOP per clip", f"{result['tokenizer_tflop_per_clip']:.2f}"),
        ("tokenizer_tflops (our setting)", f"{result['tokenizer_tflops'] or 0:.1f}"),
    ] + [(f"peak host memory, {k} video (GiB)", f"{v['peak_rss_gib']:.2f}") for k, v in result["peak_host_memory_gib"].items()]
    width_ = max(len(k) for k, _ in table)
    for k, v in table:
        print(f"{k:<{width_}}  {v}")
    write(args.out, result)
    print(f"wrote {args.out}")


def write(path, result) -> None:
    """Write the figures so far (a run cut short still leaves what it measured)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
