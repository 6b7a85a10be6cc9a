"""The trainer's dataset check (each bad dataset gives its error) and the sharded, resumable sampler."""

import json

import pytest
import torch

from cosmos_lib import sample_format as sf
from cosmos_lib.sample_format import SampleError
from cosmos_lib.train.data import SampleFolder, StreamSampler, check_dataset, collate
from cosmos_lib.train.model import transformer_config

SHAPE = (16, 16, 8, 12)  # the demo's 121 x 64 x 96 chunks
CFG = transformer_config("tiny", "text2world")


def write(folder, prefix, shape=SHAPE, fps=24.0):
    sf.write_sample(
        folder, prefix,
        info=sf.make_info(height=64, width=96, fps=fps, num_frames=121, video_path="v.mp4", start_frame=0),
        video_latent=torch.randn(shape), conditioning_latent=torch.randn(shape),
        t5_embeddings=torch.randn(sf.T5_MAX_LENGTH, sf.T5_DIM),
    )


def test_good_dataset(tmp_path):
    for i in range(3):
        write(tmp_path, f"v{i}_c0000")
    prefixes, shape = check_dataset(tmp_path, CFG)
    assert prefixes == ["v0_c0000", "v1_c0000", "v2_c0000"] and shape == SHAPE


def test_missing_folder(tmp_path):
    with pytest.raises(SampleError, match="does not exist"):
        check_dataset(tmp_path / "nope", CFG)


def test_empty_folder(tmp_path):
    with pytest.raises(SampleError, match="is empty"):
        check_dataset(tmp_path, CFG)


def test_incomplete_sample(tmp_path):
    write(tmp_path, "a_c0000")
    write(tmp_path, "b_c0000")
    (tmp_path / "b_c0000.t5_text_embeddings.pth").unlink()
    with pytest.raises(SampleError, match=r"b_c0000\.t5_text_embeddings\.pth: missing, sample 'b_c0000' is incomplete"):
        check_dataset(tmp_path, CFG)


def test_stray_file(tmp_path):
    write(tmp_path, "a_c0000")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SampleError, match=r"notes\.txt: not a sample file"):
        check_dataset(tmp_path, CFG)


def test_shapes_disagree_between_samples(tmp_path):
    write(tmp_path, "a_c0000")
    write(tmp_path, "b_c0000", shape=(16, 16, 8, 16))
    with pytest.raises(SampleError, match=r"b_c0000\.conditioning_latent\.pth: shape \(16, 16, 8, 16\), expected \(16, 16, 8, 12\)|b_c0000\.video_latent\.pth"):
        check_dataset(tmp_path, CFG)


def test_shape_does_not_fit_model(tmp_path):
    write(tmp_path, "a_c0000", shape=(16, 16, 8, 13))
    with pytest.raises(SampleError, match=r"a_c0000\.\w+\.pth: latent .* not divisible by the patch size"):
        check_dataset(tmp_path, CFG)
    write(tmp_path, "a_c0000", shape=(8, 16, 8, 12))
    with pytest.raises(SampleError, match=r"a_c0000\.\w+\.pth: shape \(8, 16, 8, 12\), the model expects \(16, T, H, W\)"):
        check_dataset(tmp_path, CFG)


def test_wrong_text_shape_and_dtype(tmp_path):
    write(tmp_path, "a_c0000")
    torch.save(torch.zeros(77, 1024, dtype=torch.bfloat16), tmp_path / "a_c0000.t5_text_embeddings.pth")
    with pytest.raises(SampleError, match=r"a_c0000\.t5_text_embeddings\.pth: shape \(77, 1024\)"):
        check_dataset(tmp_path, CFG)
    torch.save(torch.zeros(SHAPE), tmp_path / "a_c0000.video_latent.pth")
    with pytest.raises(SampleError, match=r"a_c0000\.video_latent\.pth: dtype torch.float32"):
        check_dataset(tmp_path, CFG)


def test_video2world_needs_frames_to_generate(tmp_path):
    write(tmp_path, "a_c0000", shape=(16, 1, 8, 12))
    with pytest.raises(SampleError, match="leave nothing to generate"):
        check_dataset(tmp_path, transformer_config("tiny", "video2world"), video2world=True)


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_shards_global_batches_and_resumes():
    n, g = 7, 4
    one = StreamSampler(n, global_batch=g, micro_batch=2, rank=0, world=1, seed=3)
    r0 = StreamSampler(n, global_batch=g, micro_batch=1, rank=0, world=2, seed=3)
    r1 = StreamSampler(n, global_batch=g, micro_batch=1, rank=1, world=2, seed=3)
    steps = 5
    flat = [x for mb in _take(one, 2 * steps) for x in mb]  # 2 micro-batches of 2 per step
    sharded = []
    a, b = _take(r0, 2 * steps), _take(r1, 2 * steps)
    for s in range(steps):  # each rank: 2 micro-batches of 1 per step
        sharded += a[2 * s] + a[2 * s + 1] + b[2 * s] + b[2 * s + 1]
    assert flat == sharded
    positions = [p for _, p in flat]
    assert positions == list(range(steps * g))
    # every epoch is a permutation of the samples
    epoch0 = sorted(i for i, p in flat if p < n)
    assert epoch0 == list(range(n))
    resumed = StreamSampler(n, global_batch=g, micro_batch=2, rank=0, world=1, seed=3, start_step=3)
    assert [x for mb in _take(resumed, 4) for x in mb] == flat[3 * g:5 * g]
    with pytest.raises(ValueError, match="not a multiple"):
        StreamSampler(n, global_batch=3, micro_batch=2, rank=0, world=1, seed=0)


def test_sample_folder_item(tmp_path):
    write(tmp_path, "a_c0000", fps=30.0)
    batch = collate([SampleFolder(tmp_path, ["a_c0000"])[(0, 5)]])
    assert batch["video"].shape == (1, *SHAPE) and batch["video"].dtype == torch.bfloat16
    assert batch["t5"].shape == (1, 512, 1024)
    assert batch["fps"].tolist() == [30.0] and batch["position"].tolist() == [5]


def test_accumulation_must_divide():
    from cosmos_lib.train.config import TrainConfig

    cfg = TrainConfig.from_dict({"global_batch_size": 6, "micro_batch_size": 2})
    assert cfg.accumulation(3) == 1 and cfg.accumulation(1) == 3
    with pytest.raises(ValueError, match=r"global_batch_size=6 must be a multiple of micro_batch_size \(2\) x data-parallel ranks \(2\) = 4"):
        cfg.accumulation(2)
    with pytest.raises(ValueError, match="unknown train keys"):
        TrainConfig.from_dict({"max_step": 3})
