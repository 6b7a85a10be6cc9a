"""VideoTokenizer on tiny saved models in both real on-disk forms (TorchScript and diffusers)."""

import json
import shutil

import pytest
import torch

from cosmos_lib.sample_format import latent_shape
from cosmos_lib.tiny_models import (
    save_tiny_tokenizer_diffusers,
    save_tiny_tokenizer_torchscript,
    tiny_latent_stats,
)
from cosmos_lib.tokenizer import TokenizerLoadError, VideoTokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_tokenizers")
    return {
        "torchscript": save_tiny_tokenizer_torchscript(root / "tokenizer_torchscript", seed=3),
        "diffusers": save_tiny_tokenizer_diffusers(root / "tokenizer_diffusers", seed=3),
    }


@pytest.fixture(scope="module")
def loaded(tiny):
    return {form: VideoTokenizer.load(path, device="cpu") for form, path in tiny.items()}


def _video(batch, frames, height, width, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=gen) * 2 - 1


def test_forms_detected_and_cpu_default_float32(loaded):
    assert loaded["torchscript"].form == "torchscript"
    assert loaded["diffusers"].form == "diffusers"
    for tok in loaded.values():
        assert tok.dtype == torch.float32
        assert tok.latent_mean.shape == tok.latent_std.shape == (16, 16)


def test_stats_are_the_saved_ones(loaded):
    mean, std = tiny_latent_stats(seed=3)
    for tok in loaded.values():
        torch.testing.assert_close(tok.latent_mean, mean.reshape(16, 16))
        torch.testing.assert_close(tok.latent_std, std.reshape(16, 16))


def test_121_frames_shape_and_both_forms_agree(loaded):
    video = _video(2, 121, 32, 48)
    latents = {form: tok.encode(video) for form, tok in loaded.items()}
    for latent in latents.values():
        assert latent.shape == (2, *latent_shape(121, 32, 48)) == (2, 16, 16, 4, 6)
        assert latent.dtype == torch.float32
        assert torch.isfinite(latent).all()
        assert latent.std() > 0.1  # not a constant stand-in
    torch.testing.assert_close(latents["torchscript"], latents["diffusers"], rtol=1e-5, atol=1e-5)


def test_conditioning_path_9_frames(loaded):
    video = _video(1, 121, 16, 16, seed=1)
    cond = video.clone()
    cond[:, :, 9:] = 0  # first 9 frames, then mid-grey, as the conditioning latent is made
    for tok in loaded.values():
        short = tok.encode(video[:, :, :9])
        assert short.shape == (1, 16, 2, 2, 2)
        padded = tok.encode(cond)
        assert padded.shape == (1, 16, 16, 2, 2)
        # causal: the two latent frames of the 9 conditioning frames do not see the zero padding
        torch.testing.assert_close(padded[:, :, :2], short, rtol=1e-5, atol=1e-5)


def test_normalisation_matches_hand_computation(tiny, loaded):
    from diffusers import AutoencoderKLCosmos

    video = _video(1, 17, 16, 24, seed=2)
    # diffusers: the whole model via its own API, statistics from its own config
    vae = AutoencoderKLCosmos.from_pretrained(tiny["diffusers"]).eval()
    with torch.no_grad():
        raw = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(16, -1)[:, :3]
    std = torch.tensor(vae.config.latents_std).view(16, -1)[:, :3]
    expected = (raw - mean[None, :, :, None, None]) / std[None, :, :, None, None]
    torch.testing.assert_close(loaded["diffusers"].encode(video), expected, rtol=1e-5, atol=1e-5)
    # TorchScript: the file's tuple output and the pair in mean_std.pt, read by hand
    jit = torch.jit.load(str(tiny["torchscript"] / "encoder.jit"))
    out = jit(video)
    assert isinstance(out, tuple)
    m, s = torch.load(tiny["torchscript"] / "mean_std.pt")
    m, s = m.view(16, -1)[:, :3], s.view(16, -1)[:, :3]
    expected_ts = (out[0] - m[None, :, :, None, None]) / s[None, :, :, None, None]
    torch.testing.assert_close(loaded["torchscript"].encode(video), expected_ts, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected_ts, out[0])  # the statistics do change the latent


@pytest.mark.parametrize("form", ["torchscript", "diffusers"])
def test_causal(loaded, form):
    tok = loaded[form]
    video = _video(1, 41, 16, 16, seed=4)  # 6 latent frames
    base = tok.encode(video)
    for k in (0, 1, 3):
        changed = video.clone()
        changed[:, :, 8 * k + 1:] = _video(1, 41 - (8 * k + 1), 16, 16, seed=10 + k)
        latent = tok.encode(changed)
        torch.testing.assert_close(latent[:, :, : k + 1], base[:, :, : k + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(latent[:, :, k + 1], base[:, :, k + 1], atol=1e-3)


@pytest.mark.parametrize("form", ["torchscript", "diffusers"])
def test_other_dtype_follows_load(tiny, loaded, form):
    """The model runs in the dtype asked for (bf16 on CUDA; float64 stands in here on CPU)."""
    tok = VideoTokenizer.load(tiny[form], device="cpu", dtype=torch.float64)
    assert tok.dtype == torch.float64
    video = _video(1, 9, 16, 16, seed=6)
    torch.testing.assert_close(tok.encode(video), loaded[form].encode(video), rtol=1e-4, atol=1e-4)


def test_batching_equals_one_by_one(loaded):
    video = _video(3, 9, 16, 16, seed=5)
    tok = loaded["diffusers"]
    whole = tok.encode(video)
    split = tok.encode(video, batch_size=1)
    torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole[1:2], tok.encode(video[1:2]), rtol=1e-5, atol=1e-5)


def test_model_repo_root_with_vae(tiny, tmp_path):
    shutil.copytree(tiny["diffusers"], tmp_path / "vae")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "CosmosTextToWorldPipeline"}))
    tok = VideoTokenizer.load(tmp_path)
    assert tok.form == "diffusers" and tok.folder == tmp_path / "vae"


def test_bad_video_shapes(loaded):
    tok = loaded["diffusers"]
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        tok.encode(_video(1, 10, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        tok.encode(_video(1, 9, 12, 16))
    with pytest.raises(ValueError, match="latent frames"):
        tok.encode(_video(1, 129, 8, 8))  # 17 latent frames, statistics cover 16
    with pytest.raises(ValueError, match="B, 3, T, H, W"):
        tok.encode(torch.zeros(3, 9, 16, 16))


def test_missing_files_and_folders(tiny, tmp_path):
    with pytest.raises(TokenizerLoadError, match="does not exist"):
        VideoTokenizer.load(tmp_path / "nope")
    with pytest.raises(TokenizerLoadError, match="not a Cosmos video tokenizer folder"):
        VideoTokenizer.load(tmp_path)
    ts = shutil.copytree(tiny["torchscript"], tmp_path / "ts")
    (ts / "mean_std.pt").unlink()
    with pytest.raises(TokenizerLoadError, match="mean_std.pt is missing"):
        VideoTokenizer.load(ts)
    df = shutil.copytree(tiny["diffusers"], tmp_path / "df")
    for f in df.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(TokenizerLoadError, match="no diffusion_pytorch_model"):
        VideoTokenizer.load(df)


def test_corrupt_files(tiny, tmp_path):
    ts = shutil.copytree(tiny["torchscript"], tmp_path / "ts")
    (ts / "encoder.jit").write_bytes(b"not a zip archive")
    with pytest.raises(TokenizerLoadError, match="encoder.jit: cannot be loaded"):
        VideoTokenizer.load(ts)
    ts2 = shutil.copytree(tiny["torchscript"], tmp_path / "ts2")
    torch.save({"mean": torch.zeros(256)}, ts2 / "mean_std.pt")
    with pytest.raises(TokenizerLoadError, match="mean_std.pt: expected a pair"):
        VideoTokenizer.load(ts2)
    torch.save((torch.zeros(250), torch.ones(250)), ts2 / "mean_std.pt")
    with pytest.raises(TokenizerLoadError, match="multiple of 16"):
        VideoTokenizer.load(ts2)
    torch.save((torch.zeros(256), torch.zeros(256)), ts2 / "mean_std.pt")
    with pytest.raises(TokenizerLoadError, match="std has values <= 0"):
        VideoTokenizer.load(ts2)

    df = shutil.copytree(tiny["diffusers"], tmp_path / "df")
    weights = next(df.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(TokenizerLoadError, match="cannot be read as safetensors"):
        VideoTokenizer.load(df)

    df2 = shutil.copytree(tiny["diffusers"], tmp_path / "df2")
    config = json.loads((df2 / "config.json").read_text())
    del config["latents_mean"]
    (df2 / "config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerLoadError, match="has no latents_mean"):
        VideoTokenizer.load(df2)
    config["latents_mean"] = [0.0] * 256
    config["_class_name"] = "AutoencoderKL"
    (df2 / "config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerLoadError, match="expected 'AutoencoderKLCosmos'"):
        VideoTokenizer.load(df2)
    (df2 / "config.json").write_text("{not json")
    with pytest.raises(TokenizerLoadError, match="config.json: not readable JSON"):
        VideoTokenizer.load(df2)


def test_weights_that_do_not_fit_the_config(tiny, tmp_path):
    df = shutil.copytree(tiny["diffusers"], tmp_path / "df")
    config = json.loads((df / "config.json").read_text())
    config["encoder_block_out_channels"] = [16, 16, 16, 16]
    (df / "config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerLoadError, match="config expects"):
        VideoTokenizer.load(df)
