"""The preprocessing jobs: prompts -> T5 embeddings, and one video -> its samples.

What the reference (prepare_dataset.py) does badly and this does instead (DESIGN.md):
- it reads the whole video into RAM: we stream-decode in a background thread and keep at most
  one chunk window of frames, already resized, on the tokenizer's device;
- it resizes on the CPU: we resize each frame once, on the tokenizer's device;
- it encodes the prompt again for every chunk, in float32: each distinct prompt is encoded once
  per run (``encode_prompts``), bf16 on a GPU, and shared by every chunk;
- it runs two batch-1 tokenizer passes per chunk: the video and conditioning clips of several
  chunks go through the tokenizer in one batch;
- it never seeds its chunk starts and skips short videos silently: starts come from the seed and
  the video's name, and every skipped video is reported with its reason.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

from . import sample_format
from .chunks import chunk_starts
from .encode_worker import claim_gpu
from .video import TruncatedVideo, VideoError, iter_chunks, iter_decoded, prefetch, probe, to_rgb

log = logging.getLogger("cosmos_lib.preprocess")

#: encoded batches whose samples may still be waiting to be written
MAX_BATCHES_IN_FLIGHT = 2


class BadVideo(RuntimeError):
    """A video (or its instruction file) cannot give samples; the message names the file and why."""


class Cancelled(RuntimeError):
    """The encoding was asked to stop (the job that wanted it went away)."""


@dataclass(frozen=True)
class EncodeSettings:
    num_frames: int = 121
    height: int = 704
    width: int = 1280
    conditioning_frames: int = 9
    num_chunks: int = 5
    seed: int = 42
    chunk_strategy: str = "random"
    resize_mode: str = "stretch"
    batch_size: int = 2
    decode_threads: str = "AUTO"

    def __post_init__(self) -> None:
        sample_format.latent_shape(self.num_frames, self.height, self.width)
        if not 1 <= self.conditioning_frames <= self.num_frames:
            raise ValueError(f"conditioning_frames must be in 1..num_frames, got {self.conditioning_frames}")
        if self.resize_mode not in ("stretch", "crop"):
            raise ValueError(f"resize_mode must be 'stretch' or 'crop', got {self.resize_mode!r}")


def resolve_device(device: str) -> torch.device:
    """encode.device ("auto", "cuda", "cpu", or a claimed "cuda:N") as a torch device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("encode.device is 'cuda' but no CUDA GPU is visible to this job")
    return torch.device(device)


def pick_device(device: str) -> torch.device:
    """The job's device. With several GPUs visible (a workstation: Snakemake never sets
    CUDA_VISIBLE_DEVICES), each job claims a GPU no other job of this user holds."""
    device = resolve_device(device)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return torch.device("cuda", claim_gpu(torch.cuda.device_count()))
    return device


# --- frames ----------------------------------------------------------------------------------
class PinnedUploads:
    """Host-to-GPU copies through reused pinned buffers: asynchronous uploads with a fixed amount
    of pinned host memory, however long the video (pinning each frame anew lets the pinned-memory
    cache grow with the number of frames). There are as many buffers as frames may be queued
    ahead, so the uploading thread never waits for the GPU (its side stream runs behind the
    tokenizer's kernels) before the queue is full anyway."""

    def __init__(self, slots: int):
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.copied: list[torch.cuda.Event | None] = [None] * slots
        self.next = 0

    def __call__(self, frame, device: torch.device) -> torch.Tensor:
        slot = self.next
        self.next = (slot + 1) % len(self.buffers)
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the copy out of this buffer is done
        buffer = self.buffers[slot]
        if buffer is None or tuple(buffer.shape) != frame.shape:
            buffer = self.buffers[slot] = torch.empty(frame.shape, dtype=torch.uint8, pin_memory=True)
        buffer.numpy()[...] = frame
        on_device = buffer.to(device, non_blocking=True)
        self.copied[slot] = torch.cuda.Event()
        self.copied[slot].record()
        return on_device


class FrameResizer:
    """uint8 HxWx3 frames -> (3, height, width) in [-1, 1] on the tokenizer's device.

    Bilinear (antialiased when shrinking), stretched as the reference does, or scaled to cover
    and centre-cropped (``crop``) to keep the aspect ratio.
    """

    def __init__(self, height: int, width: int, mode: str, device: torch.device, dtype: torch.dtype, ahead: int = 8):
        self.height, self.width, self.mode = height, width, mode
        self.device, self.dtype = device, dtype
        self.upload = PinnedUploads(ahead + 4) if device.type == "cuda" else None

    def _target(self, h: int, w: int) -> tuple[int, int]:
        if self.mode == "stretch":
            return self.height, self.width
        scale = max(self.height / h, self.width / w)
        return max(self.height, math.ceil(h * scale - 1e-6)), max(self.width, math.ceil(w * scale - 1e-6))

    def __call__(self, frame) -> torch.Tensor:
        x = self.upload(frame, self.device) if self.upload else torch.from_numpy(frame)
        x = x.permute(2, 0, 1).unsqueeze(0)
        # float32 for the interpolation itself (bf16 bilinear loses precision on the CPU)
        x = x.float()
        h, w = x.shape[-2:]
        th, tw = self._target(h, w)
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=th < h or tw < w)
        if (th, tw) != (self.height, self.width):
            top, left = (th - self.height) // 2, (tw - self.width) // 2
            x = x[..., top : top + self.height, left : left + self.width]
        return (x[0] / 127.5 - 1.0).clamp_(-1.0, 1.0).to(self.dtype)


def needed_frames(starts: list[int], num_frames: int) -> set[int]:
    """Indices of the frames some chunk uses; the others are decoded but never converted."""
    return {i for s in set(starts) for i in range(s, s + num_frames)}


def device_frames(decoded: Iterable, resize: FrameResizer, needed: set[int]) -> Iterator[tuple[torch.Tensor | None, object]]:
    """Decoded frames -> (resized frame on the device, CUDA event marking it done or None).

    Frames no chunk uses come out as (None, None) without being converted. Meant to run in a
    background thread: on a GPU the uploads and resizes go to a side stream, so they overlap
    the tokenizer's work on the default stream.
    """
    stream = torch.cuda.Stream(resize.device) if resize.device.type == "cuda" else None
    for index, frame in enumerate(decoded):
        if index not in needed:
            yield None, None
        elif stream is None:
            yield resize(to_rgb(frame)), None
        else:
            with torch.cuda.stream(stream):
                x = resize(to_rgb(frame))
                done = torch.cuda.Event()
                done.record(stream)
            yield x, done


def ready_frames(items: Iterable[tuple[torch.Tensor | None, object]]) -> Iterator[torch.Tensor | None]:
    """Frames from device_frames, safe to use on the current stream."""
    for x, done in items:
        if done is not None:
            stream = torch.cuda.current_stream(x.device)
            stream.wait_event(done)
            x.record_stream(stream)  # the allocator must not hand its memory out before we are done
        yield x


def conditioning_clip(clip: torch.Tensor, conditioning_frames: int) -> torch.Tensor:
    """The chunk's first frames followed by zero frames (0 = mid-grey in [-1, 1]); clip is (3,T,H,W)."""
    cond = torch.zeros_like(clip)
    cond[:, :conditioning_frames] = clip[:, :conditioning_frames]
    return cond


def encode_clips(
    tokenizer, clips: list[torch.Tensor], conditioning_frames: int, pad_to: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and conditioning latents of several chunks in one tokenizer call.

    ``pad_to`` pads a short last batch with empty clips, so that the tokenizer always sees the
    same batch shape (a compiled tokenizer would otherwise compile again for the last batch).
    """
    n = len(clips)
    padding = [torch.zeros_like(clips[0])] * max(0, (pad_to or n) - n)
    video = torch.stack(clips + padding)
    cond = torch.stack([conditioning_clip(c, conditioning_frames) for c in clips] + padding)
    latents = tokenizer.encode(torch.cat([video, cond]))
    m = len(video)
    return latents[:n], latents[m:m + n]


class HostLatents:
    """Latents on their way to host memory: bf16, copied without blocking, waited for on use."""

    def __init__(self, video: torch.Tensor, cond: torch.Tensor):
        dtype = sample_format.TENSOR_DTYPE
        self.video = video.to(dtype).to("cpu", non_blocking=True)
        self.cond = cond.to(dtype).to("cpu", non_blocking=True)
        self.event = None
        if video.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def wait(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
        return self.video, self.cond


# --- one video -------------------------------------------------------------------------------
class Progress:
    """Logs chunks done of total and samples per second, at most every ``every`` seconds."""

    def __init__(self, total: int, name: str, every: float = 10.0):
        self.total, self.name, self.every = total, name, every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s: %d/%d chunks done, %.2f samples/s", self.name, self.done, self.total, rate)


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_video(
    video_path: str | Path,
    video_id: str,
    *,
    out_dir: str | Path,
    tokenizer,
    t5_embeddings: torch.Tensor,
    settings: EncodeSettings,
    cancel: threading.Event | None = None,
) -> dict:
    """Encode every chunk of one video into samples in ``out_dir``; return the video's report.

    Raises BadVideo (naming the file) when the video gives no samples for a reason of its own:
    unreadable, truncated, not a video. A video shorter than a chunk is not an error: its report
    says it was skipped and why. Setting ``cancel`` stops the work at the next batch (Cancelled).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"video": Path(video_path).name, "video_id": video_id, "status": "ok", "reason": "", "samples": []}
    try:
        info = probe(video_path)
    except VideoError as exc:
        raise BadVideo(str(exc)) from exc
    if info.damaged_packets:
        raise BadVideo(f"{video_path}: {info.damaged_packets} video packet(s) cut off or corrupt after {info.num_frames} frames (truncated file?)")
    report.update(source_frames=info.num_frames, source_width=info.width, source_height=info.height, fps=info.fps)
    starts = chunk_starts(
        info.num_frames,
        num_frames=settings.num_frames,
        num_chunks=settings.num_chunks,
        seed=settings.seed,
        video_key=video_id,
        strategy=settings.chunk_strategy,
    )
    if not starts:
        report.update(status="skipped", reason=f"{info.num_frames} frames, shorter than num_frames={settings.num_frames}")
        log.warning("%s: skipped: %s", video_path, report["reason"])
        return report
    log.info(
        "%s: %d frames %dx%d at %.3f fps (%s, %s); %d chunks of %d frames",
        video_path, info.num_frames, info.width, info.height, info.fps, info.codec, info.pix_fmt, len(starts), settings.num_frames,
    )

    resize = FrameResizer(
        settings.height, settings.width, settings.resize_mode, tokenizer.device, tokenizer.dtype, ahead=settings.num_frames
    )
    # Three stages run at once: decoding (PyAV's thread pool, behind a thread of its own), the
    # RGB conversion, upload and resize of each frame (a second thread, on a CUDA stream of its
    # own) up to one chunk window ahead, and the windowing and encoding here.
    decoded = prefetch(iter_decoded(video_path, threads=settings.decode_threads), depth=8)
    needed = needed_frames(starts, settings.num_frames)
    frames = ready_frames(prefetch(device_frames(decoded, resize, needed), depth=settings.num_frames))
    progress = Progress(len(starts), Path(video_path).name)
    t5 = t5_embeddings.to(sample_format.TENSOR_DTYPE)
    truncated: list[TruncatedVideo] = []

    def clips() -> Iterator[tuple[int, torch.Tensor]]:
        try:
            for indices, window in iter_chunks(frames, starts, settings.num_frames):
                clip = torch.stack(window, dim=1)  # (3, T, H, W)
                for index in indices:
                    yield index, clip
        except TruncatedVideo as exc:  # after every complete window: let the last batch through
            truncated.append(exc)

    def write(indices: list[int], latents: "HostLatents") -> None:
        video_latents, cond_latents = latents.wait()
        for index, vl, cl in zip(indices, video_latents, cond_latents):
            prefix = sample_format.chunk_prefix(video_id, index)
            sample_format.write_sample(
                out_dir,
                prefix,
                info=sample_format.make_info(
                    height=info.height, width=info.width, fps=info.fps, num_frames=settings.num_frames,
                    video_path=str(video_path), start_frame=starts[index],
                ),
                video_latent=vl,
                conditioning_latent=cl,
                t5_embeddings=t5,
            )
            report["samples"].append(prefix)
        progress.update(len(indices))

    try:
        # The GPU works ahead of the host: a batch is queued as soon as its frames are there,
        # its latents come back without blocking, and a writer thread saves the samples while
        # the next batches encode (at most MAX_BATCHES_IN_FLIGHT batches wait for their writes).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-samples") as writer:
            in_flight: deque = deque()
            for batch in batched(clips(), settings.batch_size):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"{video_path}: encoding cancelled")
                # a compiled tokenizer gets the same batch shape every time; an eager one no padding
                pad_to = settings.batch_size if tokenizer.compiled else None
                latents = HostLatents(*encode_clips(tokenizer, [c for _, c in batch], settings.conditioning_frames, pad_to=pad_to))
                in_flight.append(writer.submit(write, [i for i, _ in batch], latents))
                del batch
                while len(in_flight) > MAX_BATCHES_IN_FLIGHT:
                    in_flight.popleft().result()
            for done in in_flight:
                done.result()
    except VideoError as exc:
        clear_folder(out_dir)
        raise BadVideo(str(exc)) from exc
    if truncated:
        exc = truncated[0]
        if exc.__cause__ is not None:  # a decode error: the file is broken, keep nothing of it
            clear_folder(out_dir)
            raise BadVideo(str(exc)) from exc
        # fewer frames decode than the stream's packets promised (e.g. leading frames that refer
        # to a missing picture): the complete chunks are good, the ones past the end are dropped
        report.update(status="partial", reason=str(exc))
        log.warning("%s", exc)
    report["samples"].sort()
    return report


def encode_job(job: dict, tokenizer, cancel: threading.Event | None = None) -> dict:
    """Rule encode_video's work for one video, wherever it runs (in the job, or in the encode
    worker on the job's behalf): encode it and write its report; its report.

    ``job`` (JSON-able, it travels to the worker): video, video_id, out_dir, report (path),
    t5_embeddings (path), settings (EncodeSettings fields), prompt_error, fail_on_bad_video.
    A video that gives no samples gets a report saying why (status "failed"); with
    fail_on_bad_video it raises BadVideo instead and writes no report.
    """
    report = {"video": Path(job["video"]).name, "video_id": job["video_id"], "status": "ok", "reason": "", "samples": []}
    Path(job["out_dir"]).mkdir(parents=True, exist_ok=True)
    try:
        if job["prompt_error"]:
            raise BadVideo(job["prompt_error"])
        report = encode_video(
            job["video"], job["video_id"], out_dir=job["out_dir"], tokenizer=tokenizer,
            t5_embeddings=sample_format.load_tensor(job["t5_embeddings"]), settings=EncodeSettings(**job["settings"]),
            cancel=cancel,
        )
    except BadVideo as exc:
        if job["fail_on_bad_video"]:
            raise
        log.warning("skipped: %s", exc)
        report.update(status="failed", reason=str(exc), samples=[])
    write_report(job["report"], report)
    return report


def clear_folder(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# --- prompts ---------------------------------------------------------------------------------
def encode_prompts(text_encoder, prompts: dict[str, str], out_dir: str | Path, batch_size: int = 8) -> None:
    """Encode each distinct prompt once and save ``out_dir/<key>.pth`` (512x1024 bf16), atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted(prompts)
    start = time.perf_counter()
    for i, chunk in enumerate(batched(keys, batch_size)):
        embeddings = text_encoder.encode([prompts[k] for k in chunk], batch_size=batch_size)
        for key, emb in zip(chunk, embeddings):
            sample_format.atomic_torch_save(out_dir / f"{key}.pth", emb.to(sample_format.TENSOR_DTYPE).clone())
        done = min((i + 1) * batch_size, len(keys))
        log.info("prompts: %d/%d encoded, %.1f prompts/s", done, len(keys), done / max(time.perf_counter() - start, 1e-9))


def write_report(path: str | Path, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sample_format.atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
