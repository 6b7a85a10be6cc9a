"""Streamed video decoding with PyAV, chunk windowing and background prefetch.

NVIDIA's reference (cosmos1/models/diffusion/nemo/post_training/prepare_dataset.py) reads a
whole video into memory and then slices chunks out of it. Here frames are decoded one at a time
(``iter_frames``), cut into the wanted chunks as they pass (``iter_chunks``, memory bounded by
one chunk however long the video) and decoded in a background thread (``prefetch``) so that
decoding overlaps the GPU work on the previous chunk.

Frame counts are never taken from the container header (often wrong or missing): ``probe``
counts the video packets by demuxing, and the decode pass is authoritative.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

import av
import numpy as np
from av.error import FFmpegError
from av.stream import Disposition

T = TypeVar("T")

THREAD_TYPES = ("AUTO", "FRAME", "SLICE", "NONE")


class VideoError(Exception):
    """A video cannot be used; the message names the file and the reason."""


class TruncatedVideo(VideoError):
    """The video ended (or broke) before some chunks were complete.

    ``frames_decoded``: frames received before the end; ``missing_chunks``: indices (into the
    ``starts`` given to ``iter_chunks``) of the chunks that were not produced.
    """

    def __init__(self, message: str, *, frames_decoded: int, missing_chunks: Sequence[int]):
        super().__init__(message)
        self.frames_decoded = frames_decoded
        self.missing_chunks = list(missing_chunks)


@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    num_frames: int
    stream_index: int
    codec: str
    pix_fmt: str
    #: packets the demuxer flagged as corrupt (data cut off): a truncated or damaged file
    damaged_packets: int = 0


def _open(path: str) -> "av.container.InputContainer":
    """Open ``path`` for reading, turning every way it can fail into a VideoError naming it."""
    if not os.path.exists(path):
        raise VideoError(f"{path}: file does not exist")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    try:
        return av.open(path, mode="r")
    except FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video container ({exc.__class__.__name__}: {exc})") from exc


def _video_stream(container, path: str):
    """The first video stream, whatever its index (audio or data streams may come first).

    Cover art (a still image stored as a video stream with the ``attached_pic`` disposition) is
    passed over unless it is the only video stream.
    """
    videos = list(container.streams.video)
    if not videos:
        kinds = ", ".join(s.type for s in container.streams) or "no streams"
        raise VideoError(f"{path}: has no video stream ({kinds})")
    moving = [s for s in videos if not (int(s.disposition) & int(Disposition.attached_pic))]
    return (moving or videos)[0]


def _fps(stream, path: str) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    raise VideoError(f"{path}: frame rate unknown (no average, guessed or base rate)")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate and counted frames of the first video stream of ``path``.

    ``num_frames`` is the number of real packets of that stream found by demuxing (no decoding):
    flush packets (size 0), packets the demuxer flags as corrupt (data cut off) and packets it
    flags as discarded (before the start of an MP4 edit list, e.g. a trimmed clip: the decoder
    decodes them but outputs no frame) do not count.
    Raises VideoError for a missing, empty or unreadable file, no video stream or no frames.
    """
    path = os.fspath(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
        if not width or not height:
            raise VideoError(f"{path}: video stream {stream.index} has no frame size")
        fps = _fps(stream, path)
        count = damaged = discarded = 0
        try:
            for packet in container.demux(stream):
                if packet.size > 0 and packet.is_corrupt:
                    damaged += 1
                elif packet.size > 0 and packet.is_discard:
                    discarded += 1
                elif packet.size > 0:
                    count += 1
        except FFmpegError as exc:
            raise VideoError(f"{path}: unreadable after {count} video packets ({exc.__class__.__name__}: {exc})") from exc
        if count == 0:
            raise VideoError(f"{path}: video stream {stream.index} has no frames")
        # The count is never taken from the header, but an index (MP4) listing more packets
        # than the file holds means the file was cut: those missing packets count as damaged.
        damaged += max(0, (stream.frames or 0) - (count + damaged + discarded))
        return VideoInfo(
            path=path,
            width=int(width),
            height=int(height),
            fps=fps,
            num_frames=count,
            stream_index=stream.index,
            codec=ctx.name,
            pix_fmt=str(ctx.pix_fmt),
            damaged_packets=damaged,
        )


def iter_frames(path: str | os.PathLike, *, threads: str = "AUTO") -> Iterator[np.ndarray]:
    """Decode the first video stream of ``path`` frame by frame as C-contiguous RGB uint8 (H, W, 3) arrays.

    Any pixel format the decoder produces (8/10-bit YUV 4:2:0/4:4:4, gray, ...) is converted
    with swscale. ``threads`` is PyAV's thread_type (AUTO, FRAME, SLICE or NONE). Only the
    decoder's few frames in flight are held. A decode error raises VideoError naming the file
    and the frame index reached; frames already yielded stay yielded.
    """
    return map(to_rgb, iter_decoded(path, threads=threads))


def iter_decoded(path: str | os.PathLike, *, threads: str = "AUTO") -> Iterator["av.VideoFrame"]:
    """As iter_frames, but the decoder's own frames, not yet converted: pass them to ``to_rgb``
    (in another thread, so that the conversion runs beside the decoding)."""
    path = os.fspath(path)
    thread_type = str(threads).upper()
    if thread_type not in THREAD_TYPES:
        raise ValueError(f"threads must be one of {THREAD_TYPES}, got {threads!r}")
    return _iter_decoded(path, thread_type)


def to_rgb(frame: "av.VideoFrame") -> np.ndarray:
    """A decoded frame as a C-contiguous RGB uint8 (H, W, 3) array (rows of odd widths come padded)."""
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


class _CutOff(Exception):
    """The demuxer flagged a packet as corrupt: its data was cut off (truncated file)."""

    def __init__(self, packets: int):
        super().__init__(packets)
        self.packets = packets


def _decode(container, stream) -> Iterator["av.VideoFrame"]:
    """Decoded frames of ``stream``. At the first packet the demuxer flags as corrupt, the
    decoder is flushed (the frames of all intact packets come out) and _CutOff is raised: with
    frame threads FFmpeg may otherwise drop the error and the last intact frames silently."""
    good = 0
    for packet in container.demux(stream):
        if packet.is_corrupt:
            yield from stream.codec_context.decode(None)
            raise _CutOff(good)
        if packet.size:
            good += 1
        yield from packet.decode()


def _iter_decoded(path: str, thread_type: str) -> Iterator["av.VideoFrame"]:
    index = 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = thread_type
        decoded = _decode(container, stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except _CutOff as cut:
                raise VideoError(
                    f"{path}: video data cut off after {cut.packets} intact packets, decoding stopped at "
                    f"frame {index}; the file is truncated"
                ) from None
            except FFmpegError as exc:
                raise VideoError(
                    f"{path}: decoding failed at frame {index} ({exc.__class__.__name__}: {exc}); "
                    "the file is probably truncated or corrupt"
                ) from exc
            yield frame
            del frame
            index += 1


def iter_chunks(
    frames: Iterable[T],
    starts: Sequence[int],
    num_frames: int,
    *,
    source: str | os.PathLike | None = None,
) -> Iterator[tuple[list[int], list[T]]]:
    """Cut ``num_frames``-long windows starting at ``starts`` out of a stream of frames.

    Yields ``(chunk_indices, window)`` for each distinct start in increasing order, where
    ``chunk_indices`` are the positions in ``starts`` holding that start (the random strategy may
    repeat a start) and ``window`` the list of its frames. Frames may be anything (numpy arrays,
    GPU tensors, ...). Only the frames that a pending window still needs are kept: frames before
    the next start are dropped unread, overlapping windows share their frames, so at most one
    window's frames are held here (a consumer that also keeps the previous window holds two).
    Stops reading ``frames`` once the last window is out.

    If ``frames`` ends, or raises VideoError, before all windows are complete, TruncatedVideo is
    raised after every complete window was yielded (``source`` names the file in its message).
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    by_start: dict[int, list[int]] = {}
    for chunk, start in enumerate(starts):
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"chunk {chunk}: start must be an integer >= 0, got {start!r}")
        by_start.setdefault(int(start), []).append(chunk)
    name = os.fspath(source) if source is not None else "<frames>"
    return _iter_chunks(frames, by_start, num_frames, name)


def _iter_chunks(frames: Iterable[T], by_start: dict[int, list[int]], num_frames: int, name: str) -> Iterator[tuple[list[int], list[T]]]:
    pending = sorted(by_start)
    if not pending:
        return

    next_window = 0  # index into pending of the next window to complete
    held: list[T] = []  # frames held[0..] are video frames first_held, first_held+1, ...
    first_held = 0
    seen = 0
    iterator = iter(frames)
    try:
        # no enumerate(): its reused result tuple would keep the previous frame alive
        for frame in iterator:
            index = seen
            seen += 1
            if not held:
                if index < pending[next_window]:
                    del frame  # before the next window: never kept
                    continue
                first_held = index
            held.append(frame)
            del frame
            start = pending[next_window]
            if index == start + num_frames - 1:
                window = held[start - first_held :]
                next_window += 1
                if next_window == len(pending):
                    held.clear()
                    yield by_start[start], window
                    return
                # keep only what the next window needs (it may overlap this one)
                keep_from = pending[next_window]
                del held[: keep_from - first_held]
                first_held = keep_from
                yield by_start[start], window
                del window
    except VideoError as exc:
        cause: VideoError | None = exc
    else:
        cause = None
    finally:
        held.clear()
    missing = sorted(c for s in pending[next_window:] for c in by_start[s])
    first = pending[next_window]
    # a VideoError from the decoder already names the file
    reason = f"{cause}" if cause is not None else f"{name}: video ended after {seen} frames"
    raise TruncatedVideo(
        f"{reason}; chunk(s) {missing} not produced (the first starts at frame {first} and needs "
        f"frames up to {first + num_frames - 1})",
        frames_decoded=seen,
        missing_chunks=missing,
    ) from cause


_END = object()


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(iterable: Iterable[T], depth: int) -> Iterator[T]:
    """Iterate ``iterable`` in a background thread, at most ``depth`` items ahead of the consumer.

    An exception raised by the iterable is re-raised in the consumer (same object, same type).
    If the consumer stops early (break, close, garbage collection), the thread is told to stop,
    closes the iterable (e.g. the decoder's file) and exits.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    return _prefetch(iterable, depth)


def _prefetch(iterable: Iterable[T], depth: int) -> Iterator[T]:
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = None
        try:
            iterator = iter(iterable)
            for item in iterator:
                if not put(item):
                    return
                del item
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort cleanup on early stop
                    pass

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                exc = item.exc
                del item
                raise exc
            yield item
            del item
    finally:
        stop.set()
        # unblock a producer waiting on a full queue and drop the items it made
        while True:
            try:
                items.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=10)
