"""Tiny random-weight stand-ins for the preprocessing models, saved in the REAL on-disk formats.

Used by the tests and the demo workflow (no machine here can download the real weights):

* ``tokenizer_diffusers/``: a tiny ``AutoencoderKLCosmos`` (same class, 16 latent channels, 8x8x8
  compression, non-trivial ``latents_mean``/``latents_std`` of 16*16 values), ``save_pretrained``.
* ``tokenizer_torchscript/``: ``encoder.jit`` (TorchScript trace of the SAME tiny encoder's encode
  path, returning ``(z, (mean, logvar))`` as the continuous Cosmos tokenizer's JIT does) and
  ``mean_std.pt`` (pair of flat 256-value tensors, the layout of ``nvidia/Cosmos-1.0-Tokenizer-CV8x8x8``).
  With the same seed both forms hold the same weights and statistics, so they give the same latent.
* ``text_encoder/``: a tiny ``T5EncoderModel`` with d_model = 1024 (the real sample format) and a
  working T5 tokenizer (a sentencepiece unigram model trained here on a few sentences, no network).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .sample_format import LATENT_CHANNELS, T5_DIM

#: latent frames covered by the statistics (the real tokenizer: 16, i.e. 121 frames)
STAT_FRAMES = 16

_TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=LATENT_CHANNELS,
    encoder_block_out_channels=(8, 16, 16, 16),
    decode_block_out_channels=(8, 16, 16, 16),
    num_layers=1,
    patch_size=4,
    patch_type="haar",
    spatial_compression_ratio=8,
    temporal_compression_ratio=8,
)

_SENTENCES = [
    "a video of a robot arm picking up a red cube from the table",
    "the camera pans slowly over a busy city street at night",
    "a dog runs across a green field and jumps over a fence",
    "cars drive on a wet highway in the rain under grey clouds",
    "a person opens the kitchen door and walks into the room",
    "waves break on the sandy beach while birds fly above the water",
]


def tiny_latent_stats(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-trivial per-channel, per-frame statistics (flat, 16*16, channel-major)."""
    gen = torch.Generator().manual_seed(seed + 1)
    mean = (torch.randn(LATENT_CHANNELS * STAT_FRAMES, generator=gen) * 0.2).float()
    std = (0.4 + torch.rand(LATENT_CHANNELS * STAT_FRAMES, generator=gen)).float()
    return mean, std


def build_tiny_vae(seed: int = 0):
    """The tiny AutoencoderKLCosmos (random weights from ``seed``), in float32, eval mode."""
    from diffusers import AutoencoderKLCosmos

    mean, std = tiny_latent_stats(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLCosmos(**_TINY_VAE, latents_mean=mean.tolist(), latents_std=std.tolist())
    # unit-variance-preserving random weights, so the latent is far from constant through the tiny net
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("weight") and param.dim() > 1:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
    return vae.eval()


def save_tiny_tokenizer_diffusers(folder: str | os.PathLike, seed: int = 0) -> Path:
    folder = Path(folder)
    build_tiny_vae(seed).save_pretrained(folder, safe_serialization=True)
    return folder


class _FollowInputDtype(torch.nn.Module):
    """Runs a wrapped module in float32 and returns the input's dtype.

    diffusers' Haar patch embedding casts with ``.to(hidden_states.dtype)``, which a trace records
    as a constant dtype; wrapped like this, the traced encoder also runs after ``.to(bfloat16)``
    (as the reference does with the real ``encoder.jit``).
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        like = x[:0]  # its own traced value: ``x.float()`` on a float32 trace input returns x itself
        return self.inner(x.float()).type_as(like)


class _JitEncode(torch.nn.Module):
    """encode path as the TorchScript tokenizer exports it: latent and the identity 'posterior'."""

    def __init__(self, encoder: torch.nn.Module, quant_conv: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv

    def forward(self, x: torch.Tensor):
        z = self.quant_conv(self.encoder(x))
        return z, (torch.zeros(1), torch.zeros(1))


def save_tiny_tokenizer_torchscript(folder: str | os.PathLike, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae = build_tiny_vae(seed)
    vae.encoder.patch_embed = _FollowInputDtype(vae.encoder.patch_embed)
    module = _JitEncode(vae.encoder, vae.quant_conv).eval()
    example = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace deprecation and constant-shape notes; shapes stay symbolic here
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(folder / "encoder.jit"))
    torch.save(tiny_latent_stats(seed), folder / "mean_std.pt")
    return folder


def _train_sentencepiece(vocab_size: int = 64) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SENTENCES * 10),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    return model.getvalue()


def save_tiny_t5(folder: str | os.PathLike, seed: int = 0, num_layers: int = 2) -> Path:
    """Tiny T5 encoder (d_model 1024) + T5 tokenizer; loads offline with ``from_pretrained(folder)``."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proto = _train_sentencepiece()
    (folder / "spiece.model").write_bytes(proto)
    processor = spm.SentencePieceProcessor(model_proto=proto)
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=4)
    tokenizer.save_pretrained(folder)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_DIM,
        d_kv=16,
        d_ff=64,
        num_layers=num_layers,
        num_decoder_layers=0,
        num_heads=2,
        relative_attention_num_buckets=32,
        feed_forward_proj="relu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_models(root: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """All three under ``root``: tokenizer_torchscript/, tokenizer_diffusers/, text_encoder/."""
    root = Path(root)
    return {
        "tokenizer_torchscript": save_tiny_tokenizer_torchscript(root / "tokenizer_torchscript", seed),
        "tokenizer_diffusers": save_tiny_tokenizer_diffusers(root / "tokenizer_diffusers", seed),
        "text_encoder": save_tiny_t5(root / "text_encoder", seed),
    }


if __name__ == "__main__":  # python -m cosmos_lib.tiny_models OUT_DIR
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tiny_models_"))
    for name, path in save_tiny_models(target).items():
        print(f"{name}: {path}")
