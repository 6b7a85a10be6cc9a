"""cosmos_lib.video (probe, iter_frames, iter_chunks, prefetch) and cosmos_lib.demo_videos."""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc
import weakref
from pathlib import Path

import av
import numpy as np
import pytest
from av.stream import Disposition

from cosmos_lib.demo_videos import available_encoders, synthetic_frames, write_bad_inputs, write_frames, write_video
from cosmos_lib.video import TruncatedVideo, VideoError, VideoInfo, iter_chunks, iter_frames, prefetch, probe

ENCODERS = available_encoders()


def needs(codec: str, pix_fmt: str):
    ok = codec in ENCODERS and pix_fmt in ENCODERS[codec]
    return pytest.mark.skipif(not ok, reason=f"this PyAV build has no {codec} encoder for {pix_fmt}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def plain(folder) -> Path:
    """60 frames 64x48 H.264 yuv420p at 25 fps."""
    return write_video(folder / "plain.mp4", num_frames=60, width=64, height=48, fps=25, crf=18, seed=1)


@pytest.fixture(scope="module")
def bad(folder) -> dict[str, Path]:
    return write_bad_inputs(folder / "bad")


def decode_all(path, **kw) -> list[np.ndarray]:
    return list(iter_frames(path, **kw))


# --- probe and iter_frames on unusual but valid videos ------------------------------------------
def test_probe_plain_video(plain):
    info = probe(plain)
    assert info == VideoInfo(path=str(plain), width=64, height=48, fps=25.0, num_frames=60,
                             stream_index=0, codec="h264", pix_fmt="yuv420p")


FORMATS = [
    # codec, pix_fmt, width, height, suffix, expected decoded pix_fmt
    pytest.param("libx264", "yuv420p10le", 64, 48, ".mp4", "yuv420p10le", marks=needs("libx264", "yuv420p10le"), id="h264-10bit"),
    pytest.param("libx265", "yuv420p10le", 64, 48, ".mp4", "yuv420p10le", marks=needs("libx265", "yuv420p10le"), id="h265-10bit"),
    pytest.param("libx264", "yuv444p", 65, 49, ".mp4", "yuv444p", marks=needs("libx264", "yuv444p"), id="h264-444-oddsize"),
    pytest.param("libx265", "gray", 64, 48, ".mkv", "gray", marks=needs("libx265", "gray"), id="h265-gray-mkv"),
    pytest.param("mpeg4", "yuv420p", 66, 50, ".mp4", "yuv420p", marks=needs("mpeg4", "yuv420p"), id="mpeg4"),
    pytest.param("libvpx-vp9", "yuv444p", 64, 48, ".webm", "yuv444p", marks=needs("libvpx-vp9", "yuv444p"), id="vp9-444-webm"),
    pytest.param("libsvtav1", "yuv420p10le", 64, 48, ".mp4", "yuv420p10le", marks=needs("libsvtav1", "yuv420p10le"), id="av1-10bit"),
]


@pytest.mark.parametrize("codec, pix_fmt, width, height, suffix, decoded_fmt", FORMATS)
def test_formats_decode_to_rgb_and_probe_counts_the_decoded_frames(folder, codec, pix_fmt, width, height, suffix, decoded_fmt):
    n = 23
    options = dict(bitrate=3_000_000) if codec == "mpeg4" else dict(crf=12)
    path = write_video(folder / f"f_{codec}_{pix_fmt}{suffix}", num_frames=n, width=width, height=height,
                       codec=codec, pix_fmt=pix_fmt, seed=3, **options)
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.pix_fmt) == (width, height, n, decoded_fmt)
    frames = decode_all(path)
    assert len(frames) == info.num_frames
    for f in frames:
        assert f.shape == (height, width, 3) and f.dtype == np.uint8 and f.flags["C_CONTIGUOUS"]
    source = list(synthetic_frames(n, width, height, seed=3))
    for got, want in zip(frames, source):
        want = want.astype(np.float32)
        if pix_fmt == "gray":  # luma only: R=G=B=Y
            assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
            want = (want @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        assert np.abs(got.astype(np.float32) - want).mean() < 8, "decoded frame far from what was encoded"
    assert not np.array_equal(frames[0], frames[-1])


COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "grey": (128, 128, 128)}


@pytest.mark.parametrize(
    "codec, pix_fmt",
    [
        pytest.param("libx264", "yuv420p", id="h264"),
        pytest.param("libx264", "yuv420p10le", marks=needs("libx264", "yuv420p10le"), id="h264-10bit"),
        pytest.param("libx265", "yuv444p10le", marks=needs("libx265", "yuv444p10le"), id="h265-444-10bit"),
        pytest.param("libvpx-vp9", "yuv444p", marks=needs("libvpx-vp9", "yuv444p"), id="vp9-444"),
    ],
)
def test_solid_colours_come_back_as_rgb(folder, codec, pix_fmt):
    for name, colour in COLOURS.items():
        frames = (np.full((48, 64, 3), colour, np.uint8) for _ in range(3))
        path = write_frames(folder / f"solid_{name}_{codec}_{pix_fmt}.mkv", frames, codec=codec, pix_fmt=pix_fmt, crf=10)
        decoded = decode_all(path)
        assert len(decoded) == 3
        mean = decoded[1].reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colour).max() < 6, f"{name} {colour} decoded as {mean}"


def test_audio_stream_first(folder):
    path = write_video(folder / "audio_first.mp4", num_frames=31, width=64, height=48, audio_first=True, seed=5)
    with av.open(str(path)) as c:
        assert [s.type for s in c.streams] == ["audio", "video"]
    info = probe(path)
    assert info.stream_index == 1 and info.num_frames == 31 and info.codec == "h264"
    frames = decode_all(path)
    assert len(frames) == 31
    # the pictures that were encoded
    assert all(np.abs(a.astype(int) - b).mean() < 8 for a, b in zip(frames, synthetic_frames(31, 64, 48, seed=5)))


def test_cover_art_is_not_taken_for_the_video(folder):
    path = folder / "cover.mp4"
    with av.open(str(path), "w") as c:
        cover = c.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = Disposition.attached_pic
        video = c.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        picture.pts = 0
        c.mux(cover.encode(picture) + cover.encode(None))
        for i, image in enumerate(synthetic_frames(12, 64, 48)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            c.mux(video.encode(frame))
        c.mux(video.encode(None))
    info = probe(path)
    assert (info.codec, info.width, info.num_frames) == ("h264", 64, 12)
    assert len(decode_all(path)) == 12


def test_cover_art_first_is_passed_over():
    """The MP4 muxer stores cover art last; other containers may list it first."""
    from types import SimpleNamespace

    from cosmos_lib.video import _video_stream

    def stream(kind, disposition):
        return SimpleNamespace(type=kind, disposition=disposition)

    cover, film, sound = stream("video", Disposition.attached_pic), stream("video", Disposition.default), stream("audio", Disposition.default)
    container = SimpleNamespace(streams=SimpleNamespace(video=[cover, film]))
    assert _video_stream(container, "x.mkv") is film
    container = SimpleNamespace(streams=SimpleNamespace(video=[cover]))
    assert _video_stream(container, "x.mkv") is cover  # a still is still better than nothing
    audio_only = SimpleNamespace(streams=type("Streams", (), {"video": [], "__iter__": lambda self: iter([sound])})())
    with pytest.raises(VideoError, match=r"x.mkv: has no video stream \(audio\)"):
        _video_stream(audio_only, "x.mkv")


def test_frame_count_is_counted_not_read_from_the_header(folder):
    path = write_video(folder / "count.mkv", num_frames=37, width=64, height=48, seed=2)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # Matroska stores no frame count
    assert probe(path).num_frames == 37


def test_frames_cut_by_an_edit_list_are_not_counted(folder, plain):
    """A trimmed MP4: its first packets lie before the edit list's start; no frame comes out of them."""
    path = folder / "edit_list.mp4"
    with av.open(str(plain)) as src, av.open(str(path), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        shift = int(5 / (stream.average_rate * stream.time_base))  # 5 frames before time 0
        for packet in src.demux(stream):
            if packet.size == 0:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out
            dst.mux(packet)
    with av.open(str(path)) as c:
        assert sum(p.is_discard for p in c.demux(c.streams.video[0])) == 5
    info = probe(path)
    assert info.num_frames == 55 == len(decode_all(path))


def test_fractional_fps(folder):
    path = write_video(folder / "ntsc.mp4", num_frames=20, width=64, height=48, fps=30000 / 1001)
    assert probe(path).fps == pytest.approx(29.97, abs=0.01)


@pytest.mark.parametrize("threads", ["NONE", "SLICE", "FRAME", "auto"])
def test_thread_types_give_the_same_frames(plain, threads):
    reference = decode_all(plain, threads="NONE")
    frames = decode_all(plain, threads=threads)
    assert len(frames) == len(reference) == 60
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference))


def test_bad_thread_type(plain):
    with pytest.raises(ValueError, match="threads"):
        iter_frames(plain, threads="MANY")


def test_iter_frames_streams(folder):
    """Consuming frame by frame holds a few frames, not the video (numpy allocations are traced)."""
    width, height, n = 320, 240, 60
    path = write_video(folder / "stream.mp4", num_frames=n, width=width, height=height, seed=4)
    frame_bytes = width * height * 3
    gc.collect()
    tracemalloc.start()
    try:
        count = 0
        for frame in iter_frames(path):
            count += 1
            del frame
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 6 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames"


# --- bad inputs --------------------------------------------------------------------------------
def test_write_bad_inputs(bad):
    assert set(bad) == {"empty", "truncated", "truncated_no_index", "not_a_video"}
    assert all(p.is_file() and p.suffix == ".mp4" for p in bad.values())
    assert bad["empty"].stat().st_size == 0
    assert sorted(os.listdir(bad["empty"].parent)) == sorted(p.name for p in bad.values())  # no temp files left


@pytest.mark.parametrize(
    "name, reason",
    [("empty", "empty"), ("truncated_no_index", "not a readable video"), ("not_a_video", "not a readable video")],
)
def test_unusable_files_raise_video_error_naming_the_file(bad, name, reason):
    path = bad[name]
    for call in (lambda: probe(path), lambda: decode_all(path)):
        with pytest.raises(VideoError, match=reason) as err:
            call()
        assert str(path) in str(err.value)


def test_missing_file_and_directory(folder):
    missing = folder / "nope.mp4"
    with pytest.raises(VideoError, match="does not exist") as err:
        probe(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(VideoError, match="does not exist"):
        next(iter_frames(missing))
    with pytest.raises(VideoError, match="directory"):
        probe(folder)


def test_no_video_stream(folder):
    path = folder / "audio_only.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4800), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match="no video stream") as err:
        probe(path)
    assert str(path) in str(err.value) and "audio" in str(err.value)


def test_video_stream_without_frames(folder):
    path = folder / "zero_frames.mkv"
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = c.add_stream("aac", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4800), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        c.mux(audio.encode(frame) + audio.encode(None))
    with av.open(str(path)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
    with pytest.raises(VideoError, match="no frames") as err:
        probe(path)
    assert str(path) in str(err.value)


def test_truncated_video_yields_its_intact_frames_then_raises(bad):
    path = bad["truncated"]
    info = probe(path)  # the index is at the front, so it opens; only intact packets count
    assert 0 < info.num_frames < 40
    for threads in ("AUTO", "NONE"):
        got = []
        with pytest.raises(VideoError) as err:
            for frame in iter_frames(path, threads=threads):
                got.append(frame)
        message = str(err.value)
        assert str(path) in message and "truncated" in message
        assert f"frame {len(got)}" in message
        assert len(got) == info.num_frames
    # the intact frames are the right ones
    full = list(synthetic_frames(40, 64, 48, seed=7))
    assert all(np.abs(a.astype(int) - b).mean() < 8 for a, b in zip(got, full))


# --- iter_chunks ---------------------------------------------------------------------------------
class Item:
    """A frame stand-in that counts how many are alive."""

    live = 0

    def __init__(self, index: int):
        self.index = index
        Item.live += 1

    def __del__(self):
        Item.live -= 1


def counted(n: int, log: list[int], alive: list[int] | None = None):
    """Items 0..n-1; ``log`` gets each index as it is read, ``alive`` the live Items at that moment."""
    for i in range(n):
        log.append(i)
        item = Item(i)
        if alive is not None:
            alive.append(Item.live)
        yield item
        del item


def run_chunks(n, starts, num_frames):
    """Collect (indices, [frame indices]) of iter_chunks over n Items; also the most Items ever alive."""
    gc.collect()
    assert Item.live == 0
    log: list[int] = []
    alive: list[int] = []
    out = []
    for indices, window in iter_chunks(counted(n, log, alive), starts, num_frames):
        alive.append(Item.live)
        out.append((indices, [f.index for f in window]))
        del window  # a consumer that lets go of a window before asking for the next
    return out, max(alive), log


def test_windows_hold_the_right_frames():
    out, _, _ = run_chunks(100, [30, 5, 60], 10)
    assert out == [([1], list(range(5, 15))), ([0], list(range(30, 40))), ([2], list(range(60, 70)))]


def test_repeated_starts_share_one_window():
    out, _, _ = run_chunks(50, [7, 3, 7, 3, 20], 5)
    assert out == [([1, 3], [3, 4, 5, 6, 7]), ([0, 2], [7, 8, 9, 10, 11]), ([4], [20, 21, 22, 23, 24])]


def test_overlapping_windows_and_memory_bound():
    starts = [0, 2, 4, 6, 30, 31]
    out, peak, _ = run_chunks(60, starts, 8)
    assert [o[1] for o in out] == [list(range(s, s + 8)) for s in sorted(starts)]
    assert peak <= 8 + 1  # one window (+ the frame being read), however much the windows overlap


def test_memory_is_bounded_by_one_window_on_a_long_stream():
    out, peak, log = run_chunks(5000, [100, 2000, 4000], 50)
    assert len(out) == 3 and peak <= 50 + 1
    assert log[-1] == 4049  # nothing read after the last window
    gc.collect()
    assert Item.live == 0


def test_frames_before_the_first_start_are_not_kept_and_reading_stops_after_the_last_window():
    seen_alive: list[int] = []
    gc.collect()
    log: list[int] = []
    result = [(i, [f.index for f in w]) for i, w in iter_chunks(counted(1000, log, seen_alive), [500], 3)]
    assert result == [([0], [500, 501, 502])]
    assert max(seen_alive[:500]) <= 1  # skipped frames are dropped at once
    assert log[-1] == 502  # nothing read after the last window


def test_frames_need_not_be_arrays():
    out = list(iter_chunks(iter("abcdefg"), [1, 4], 3))
    assert out == [([0], ["b", "c", "d"]), ([1], ["e", "f", "g"])]


def test_no_starts_reads_nothing():
    log: list[int] = []
    assert list(iter_chunks(counted(10, log), [], 4)) == []
    assert log == []


def test_stream_ending_early_raises_truncated_after_the_complete_windows():
    got = []
    with pytest.raises(TruncatedVideo) as err:
        for indices, window in iter_chunks(iter(range(25)), [20, 0, 10, 20, 30], 8, source="clip.mp4"):
            got.append((indices, window))
    assert got == [([1], list(range(0, 8))), ([2], list(range(10, 18)))]
    assert err.value.frames_decoded == 25
    assert err.value.missing_chunks == [0, 3, 4]
    assert isinstance(err.value, VideoError)
    assert "clip.mp4" in str(err.value) and "25 frames" in str(err.value)


def test_a_video_error_mid_stream_becomes_truncated_video():
    def broken():
        yield from range(12)
        raise VideoError("clip.mp4: decoding failed at frame 12")

    got = []
    with pytest.raises(TruncatedVideo) as err:
        for indices, window in iter_chunks(broken(), [0, 9], 5, source="clip.mp4"):
            got.append(window)
    assert got == [[0, 1, 2, 3, 4]]
    assert err.value.frames_decoded == 12 and err.value.missing_chunks == [1]
    assert "decoding failed at frame 12" in str(err.value)
    assert isinstance(err.value.__cause__, VideoError)


def test_other_errors_pass_through_unchanged():
    def broken():
        yield 0
        raise KeyError("gpu")

    with pytest.raises(KeyError):
        list(iter_chunks(broken(), [0], 3))


@pytest.mark.parametrize("starts, num_frames", [([0], 0), ([-1], 3), ([1.5], 3), ([0], True)])
def test_iter_chunks_bad_arguments(starts, num_frames):
    with pytest.raises(ValueError):
        iter_chunks(iter(range(10)), starts, num_frames)


def test_chunks_of_a_real_video(plain):
    full = decode_all(plain)
    starts = [40, 3, 12, 3]
    got = list(iter_chunks(iter_frames(plain), starts, 17, source=plain))
    assert [g[0] for g in got] == [[1, 3], [2], [0]]
    for (indices, window), start in zip(got, [3, 12, 40]):
        assert len(window) == 17
        assert all(np.array_equal(a, b) for a, b in zip(window, full[start : start + 17]))
    with pytest.raises(TruncatedVideo) as err:
        list(iter_chunks(iter_frames(plain), [50], 17, source=plain))
    assert err.value.frames_decoded == 60 and err.value.missing_chunks == [0] and str(plain) in str(err.value)


def test_truncated_file_through_iter_chunks(bad):
    n = probe(bad["truncated"]).num_frames
    got = []
    with pytest.raises(TruncatedVideo) as err:
        for indices, window in iter_chunks(iter_frames(bad["truncated"]), [0, n - 2], 4, source=bad["truncated"]):
            got.append(indices)
    assert got == [[0]] and err.value.missing_chunks == [1] and err.value.frames_decoded == n
    assert str(bad["truncated"]) in str(err.value)


# --- prefetch ------------------------------------------------------------------------------------
def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "prefetch"]


def wait_for(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_prefetch_keeps_order_and_runs_elsewhere():
    producer_threads = set()

    def source():
        for i in range(50):
            producer_threads.add(threading.get_ident())
            yield i

    assert list(prefetch(source(), depth=3)) == list(range(50))
    assert producer_threads and threading.get_ident() not in producer_threads
    assert wait_for(lambda: not prefetch_threads())


def test_prefetch_is_bounded_by_depth():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    it = prefetch(source(), depth=4)
    assert next(it) == 0
    time.sleep(0.3)
    # the consumer holds item 0; the queue holds at most 4; the producer holds one more waiting
    assert len(produced) <= 1 + 4 + 1
    assert list(it) == list(range(1, 100))


class CustomError(RuntimeError):
    pass


def test_prefetch_reraises_the_original_exception_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise CustomError("boom at 3")

    got = []
    with pytest.raises(CustomError, match="boom at 3"):
        for x in prefetch(source(), depth=2):
            got.append(x)
    assert got == [1, 2]
    assert wait_for(lambda: not prefetch_threads())


def test_prefetch_stops_the_thread_when_the_consumer_stops_early():
    closed = threading.Event()
    produced = []

    def source():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    for x in prefetch(source(), depth=2):
        if x == 5:
            break
    # the for loop dropped the generator: it is closed, so the thread must end and close the source
    assert closed.wait(5), "source was not closed"
    assert wait_for(lambda: not prefetch_threads()), "prefetch thread still alive"
    assert len(produced) < 20


def test_prefetch_explicit_close_and_real_decoder(plain):
    it = prefetch(iter_frames(plain), depth=2)
    first = next(it)
    assert first.shape == (48, 64, 3)
    it.close()
    assert wait_for(lambda: not prefetch_threads())
    # full run equals the direct decode, and errors keep their type
    assert all(np.array_equal(a, b) for a, b in zip(prefetch(iter_frames(plain), 3), decode_all(plain)))
    with pytest.raises(VideoError):
        list(prefetch(iter_frames(plain.with_name("missing.mp4")), 2))


def test_prefetch_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        prefetch(iter([]), 0)


def test_prefetch_not_started_leaks_no_thread():
    before = len(prefetch_threads())
    it = prefetch(iter(range(3)), 2)
    del it
    gc.collect()
    assert len(prefetch_threads()) == before


# --- demo videos ---------------------------------------------------------------------------------
def test_write_video_is_deterministic_and_moves(folder):
    a = write_video(folder / "det_a.mp4", num_frames=20, width=64, height=48, seed=11)
    b = write_video(folder / "det_b.mp4", num_frames=20, width=64, height=48, seed=11)
    c = write_video(folder / "det_c.mp4", num_frames=20, width=64, height=48, seed=12)
    fa, fb, fc = decode_all(a), decode_all(b), decode_all(c)
    # the pictures are a function of the seed; x264 itself is not always bit-exact from run to run
    assert all(np.array_equal(x, y) for x, y in zip(synthetic_frames(20, 64, 48, 11), synthetic_frames(20, 64, 48, 11)))
    source = list(synthetic_frames(20, 64, 48, 11))
    assert all(np.abs(x.astype(int) - y).mean() < 8 for x, y in zip(fa, source))
    assert all(np.abs(x.astype(int) - y).mean() < 8 for x, y in zip(fb, source))
    assert np.abs(fa[0].astype(int) - fc[0]).mean() > 20  # another seed, another picture
    # every frame differs from the previous one (shapes move), by a visible amount
    assert all(np.abs(x.astype(int) - y).mean() > 1 for x, y in zip(fa, fa[1:]))
    assert not any(n.startswith(".") for n in os.listdir(folder))  # no temporary files left


def test_write_video_failure_leaves_nothing(folder):
    target = folder / "fails.mp4"

    def frames():
        yield np.zeros((48, 64, 3), np.uint8)
        yield np.zeros((40, 64, 3), np.uint8)  # wrong size

    with pytest.raises(ValueError, match="frame 1"):
        write_frames(target, frames())
    assert not target.exists()
    assert not [n for n in os.listdir(folder) if "fails" in n]


def test_write_video_argument_checks(folder):
    with pytest.raises(ValueError, match="crf"):
        write_video(folder / "x.mp4", num_frames=2, width=64, height=48, codec="mpeg4", crf=10)
    with pytest.raises(ValueError, match="num_frames"):
        write_video(folder / "x.mp4", num_frames=0, width=64, height=48)
    assert not (folder / "x.mp4").exists()
