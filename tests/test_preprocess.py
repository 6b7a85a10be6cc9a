"""The encode jobs, called directly: frames, batching, chunk windows, prompts once, bad videos."""

import json

import numpy as np
import pytest
import torch

from cosmos_lib import sample_format as sf
from cosmos_lib.chunks import chunk_starts
from cosmos_lib.demo_videos import write_bad_inputs, write_video
from cosmos_lib.preprocess import (
    BadVideo,
    EncodeSettings,
    FrameResizer,
    conditioning_clip,
    encode_clips,
    encode_prompts,
    encode_video,
)
from cosmos_lib.text_encoder import TextEncoder
from cosmos_lib.tiny_models import save_tiny_t5, save_tiny_tokenizer_diffusers
from cosmos_lib.tokenizer import VideoTokenizer
from cosmos_lib.video import iter_frames

SETTINGS = EncodeSettings(num_frames=17, height=16, width=32, conditioning_frames=9, num_chunks=4, seed=3, batch_size=3)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = save_tiny_tokenizer_diffusers(tmp_path_factory.mktemp("tok") / "vae")
    return VideoTokenizer.load(folder, device="cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("vid") / "clip one.mp4"
    write_video(path, num_frames=40, width=64, height=48, seed=1)
    return path


def test_frame_resizer_stretch_and_crop():
    frame = np.zeros((40, 120, 3), dtype=np.uint8)
    frame[:, :40] = (255, 0, 0)
    frame[:, 40:80] = (0, 255, 0)
    frame[:, 80:] = (0, 0, 255)
    stretch = FrameResizer(16, 16, "stretch", torch.device("cpu"), torch.float32)(frame)
    assert stretch.shape == (3, 16, 16) and stretch.min() >= -1 and stretch.max() <= 1
    assert stretch[0, :, 0].mean() > 0.9 and stretch[2, :, -1].mean() > 0.9  # both sides kept, squeezed
    crop = FrameResizer(16, 16, "crop", torch.device("cpu"), torch.float32)(frame)
    assert crop.shape == (3, 16, 16)
    assert crop[1].mean() > 0.9 and crop[0].mean() < -0.9 and crop[2].mean() < -0.9  # only the centre
    grey = FrameResizer(8, 8, "stretch", torch.device("cpu"), torch.float32)(np.full((8, 8, 3), 128, np.uint8))
    assert torch.allclose(grey, torch.full_like(grey, 128 / 127.5 - 1), atol=1e-6)


def test_conditioning_clip_keeps_first_frames_and_zeroes_the_rest():
    clip = torch.rand(3, 17, 4, 4) * 2 - 1
    cond = conditioning_clip(clip, 9)
    assert torch.equal(cond[:, :9], clip[:, :9]) and not cond[:, 9:].any()


def test_batched_encode_equals_one_by_one(tokenizer):
    clips = [torch.rand(3, 17, 16, 32) * 2 - 1 for _ in range(3)]
    video, cond = encode_clips(tokenizer, clips, 9)
    for i, clip in enumerate(clips):
        assert torch.allclose(video[i], tokenizer.encode(clip[None])[0], atol=1e-4)
        assert torch.allclose(cond[i], tokenizer.encode(conditioning_clip(clip, 9)[None])[0], atol=1e-4)


def test_padded_last_batch_gives_the_same_latents(tokenizer):
    clips = [torch.rand(3, 17, 16, 32) * 2 - 1 for _ in range(2)]
    video, cond = encode_clips(tokenizer, clips, 9)
    pv, pc = encode_clips(tokenizer, clips, 9, pad_to=4)
    assert pv.shape == video.shape == (2, 16, 3, 2, 4) and torch.allclose(pv, video, atol=1e-5)
    assert torch.allclose(pc, cond, atol=1e-5)


def test_encode_video_samples_match_an_independent_whole_decode(tmp_path, tokenizer, video):
    t5 = torch.randn(512, 1024)
    report = encode_video(video, "clip_one-x", out_dir=tmp_path, tokenizer=tokenizer, t5_embeddings=t5, settings=SETTINGS)
    starts = chunk_starts(40, num_frames=17, num_chunks=4, seed=3, video_key="clip_one-x", strategy="random")
    assert report["status"] == "ok" and report["samples"] == [sf.chunk_prefix("clip_one-x", i) for i in range(4)]
    resize = FrameResizer(16, 32, "stretch", torch.device("cpu"), torch.float32)
    frames = [resize(f) for f in iter_frames(video)]  # the whole video: fine for 40 tiny frames
    for i, start in enumerate(starts):
        prefix = sf.chunk_prefix("clip_one-x", i)
        data = sf.read_sample(tmp_path, prefix)
        assert data[sf.INFO]["start_frame"] == start
        assert (data[sf.INFO]["width"], data[sf.INFO]["height"], data[sf.INFO]["video_path"]) == (64, 48, "clip one.mp4")
        clip = torch.stack(frames[start:start + 17], dim=1)
        expected = tokenizer.encode(clip[None])[0].to(torch.bfloat16)
        assert torch.allclose(data[sf.VIDEO_LATENT].float(), expected.float(), atol=2e-2, rtol=1e-2)
        expected_cond = tokenizer.encode(conditioning_clip(clip, 9)[None])[0].to(torch.bfloat16)
        assert torch.allclose(data[sf.CONDITIONING_LATENT].float(), expected_cond.float(), atol=2e-2, rtol=1e-2)
        assert torch.equal(data[sf.T5_EMBEDDINGS], t5.to(torch.bfloat16))
    assert sf.validate_folder(tmp_path) == report["samples"]


def test_short_video_is_skipped_with_its_reason(tmp_path, tokenizer):
    path = tmp_path / "short.mp4"
    write_video(path, num_frames=10, width=32, height=32)
    report = encode_video(path, "short", out_dir=tmp_path / "out", tokenizer=tokenizer, t5_embeddings=torch.zeros(512, 1024), settings=SETTINGS)
    assert report["status"] == "skipped" and report["samples"] == [] and "10 frames" in report["reason"]


def test_bad_videos_raise_naming_the_file_and_leave_nothing(tmp_path, tokenizer):
    bad = write_bad_inputs(tmp_path / "bad")
    for name, path in bad.items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(BadVideo) as info:
            encode_video(path, name, out_dir=out, tokenizer=tokenizer, t5_embeddings=torch.zeros(512, 1024), settings=SETTINGS)
        assert path.name in str(info.value)
        assert list(out.iterdir()) == []


def test_each_distinct_prompt_goes_through_t5_once(tmp_path):
    encoder = TextEncoder.load(save_tiny_t5(tmp_path / "t5"), device="cpu")
    rows = []
    encoder.model.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    prompts = {f"k{i}": f"pick up cube number {i}" for i in range(5)}
    encode_prompts(encoder, prompts, tmp_path / "text", batch_size=2)
    assert sum(rows) == 5  # five prompts, five rows through the encoder, whatever the batching
    for key, text in prompts.items():
        saved = torch.load(tmp_path / "text" / f"{key}.pth")
        assert saved.shape == (512, 1024) and saved.dtype == torch.bfloat16
        assert torch.equal(saved, encoder.encode([text])[0])


def test_fewer_frames_than_counted_keeps_the_complete_chunks(tmp_path, tokenizer, video, monkeypatch):
    """A stream that decodes fewer frames than its packets (no decode error) loses only the chunks past its end."""
    import itertools

    import cosmos_lib.preprocess as pre

    real = pre.iter_decoded
    monkeypatch.setattr(pre, "iter_decoded", lambda path, threads="AUTO": itertools.islice(real(path, threads=threads), 30))
    settings = EncodeSettings(num_frames=17, height=16, width=32, num_chunks=6, chunk_strategy="even", batch_size=2)
    report = encode_video(video, "v", out_dir=tmp_path, tokenizer=tokenizer, t5_embeddings=torch.zeros(512, 1024), settings=settings)
    starts = chunk_starts(40, num_frames=17, num_chunks=6, seed=0, video_key="v", strategy="even")
    kept = [i for i, s in enumerate(starts) if s + 17 <= 30]
    assert report["status"] == "partial" and "ended after 30 frames" in report["reason"]
    assert report["samples"] == [sf.chunk_prefix("v", i) for i in kept] and 0 < len(kept) < len(starts)
    assert sf.validate_folder(tmp_path) == report["samples"]


def test_side_by_side_jobs_claim_different_gpus(tmp_path):
    """Each process claims a free GPU slot; a third waits until one is given back."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; from cosmos_lib.preprocess import claim_gpu; "
        f"print(claim_gpu(2, {str(tmp_path)!r}, poll_s=0.1), flush=True); time.sleep(float(sys.argv[1]))"
    )
    first = subprocess.Popen([sys.executable, "-c", code, "3"], stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen([sys.executable, "-c", code, "3"], stdout=subprocess.PIPE, text=True)
    claims = {int(first.stdout.readline()), int(second.stdout.readline())}
    assert claims == {0, 1}
    start = time.monotonic()
    third = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True, timeout=60)
    assert int(third.stdout) in (0, 1) and time.monotonic() - start > 1.0  # it had to wait for a slot
    first.wait()
    second.wait()
