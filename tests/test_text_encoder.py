"""TextEncoder on a tiny T5 (d_model 1024) saved in the real layouts (T5 folder, diffusers repo)."""

import json
import shutil

import pytest
import torch

from cosmos_lib.sample_format import T5_DIM, T5_MAX_LENGTH
from cosmos_lib.text_encoder import TextEncoder, TextEncoderLoadError
from cosmos_lib.tiny_models import save_tiny_t5

PROMPTS = [
    "a robot arm picks up a red cube",
    "a dog runs across a green field in the rain while the camera pans",
    "night",
    "cars drive on a highway",
    "a person opens the door",
]


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("t5") / "t5", seed=1)


@pytest.fixture(scope="module")
def encoder(t5_folder):
    return TextEncoder.load(t5_folder, device="cpu")


def _token_count(encoder, prompt):
    return len(encoder.tokenizer(prompt, truncation=True, max_length=T5_MAX_LENGTH)["input_ids"])


def test_shape_dtype_device(encoder):
    out = encoder.encode(PROMPTS[:2])
    assert out.shape == (2, T5_MAX_LENGTH, T5_DIM)
    assert out.dtype == torch.bfloat16
    assert out.device.type == "cpu"
    assert encoder.dtype == torch.float32  # CPU default


def test_rows_after_token_count_are_zero(encoder):
    out = encoder.encode(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        n = _token_count(encoder, prompt)
        assert 1 < n < T5_MAX_LENGTH
        assert (out[i, n:] == 0).all()
        assert (out[i, :n].float().abs().sum(dim=-1) > 0).all()


def test_matches_reference_computation(encoder):
    """The reference's encode_for_batch, written out by hand on the same model."""
    tokens = encoder.tokenizer(
        PROMPTS, return_tensors="pt", truncation=True, padding="max_length", max_length=T5_MAX_LENGTH
    )
    with torch.no_grad():
        hidden = encoder.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    lengths = tokens.attention_mask.sum(dim=1)
    for b in range(hidden.shape[0]):
        hidden[b][lengths[b]:] = 0
    torch.testing.assert_close(encoder.encode(PROMPTS, batch_size=5), hidden.to(torch.bfloat16))


def test_batching_equals_one_by_one(encoder):
    batched = encoder.encode(PROMPTS, batch_size=2)
    single = torch.cat([encoder.encode([p]) for p in PROMPTS])
    torch.testing.assert_close(batched.float(), single.float(), rtol=1e-2, atol=1e-2)
    # and they are different prompts, so different rows
    assert not torch.equal(batched[0], batched[1])


def test_truncates_long_prompt(encoder):
    out = encoder.encode(["a robot walks " * 400])
    assert out.shape == (1, T5_MAX_LENGTH, T5_DIM)
    assert (out[0].float().abs().sum(dim=-1) > 0).all()  # all 512 tokens are real


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_prompt_is_an_error(encoder, bad):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        encoder.encode(["fine", bad])


def test_single_string_is_an_error(encoder):
    with pytest.raises(TypeError):
        encoder.encode("a prompt")


def test_diffusers_repo_layout_gives_same_embeddings(encoder, t5_folder, tmp_path):
    shutil.copytree(t5_folder, tmp_path / "text_encoder")
    shutil.copytree(t5_folder, tmp_path / "tokenizer")
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "text_encoder" / name).unlink()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "tokenizer" / name).unlink()
    (tmp_path / "model_index.json").write_text("{}")
    other = TextEncoder.load(tmp_path)
    torch.testing.assert_close(other.encode(PROMPTS[:2]), encoder.encode(PROMPTS[:2]))


def test_wrong_d_model_is_an_error(t5_folder, tmp_path):
    folder = shutil.copytree(t5_folder, tmp_path / "t5")
    config = json.loads((folder / "config.json").read_text())
    config["d_model"] = 512
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextEncoderLoadError, match="d_model 512"):
        TextEncoder.load(folder)


def test_missing_pieces_are_errors(t5_folder, tmp_path):
    with pytest.raises(TextEncoderLoadError, match="does not exist"):
        TextEncoder.load(tmp_path / "nope")
    with pytest.raises(TextEncoderLoadError, match="not a T5 folder"):
        TextEncoder.load(tmp_path)
    folder = shutil.copytree(t5_folder, tmp_path / "t5")
    (folder / "model.safetensors").unlink()
    with pytest.raises(TextEncoderLoadError, match="cannot load the T5 encoder"):
        TextEncoder.load(folder)
    folder2 = shutil.copytree(t5_folder, tmp_path / "t5b")
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json"):
        (folder2 / name).unlink()
    with pytest.raises(TextEncoderLoadError, match="no T5 tokenizer files"):
        TextEncoder.load(folder2)
