"""T5 text encoder for the prompt embeddings of the cached sample format.

Follows ``encode_for_batch`` of cosmos1/models/diffusion/nemo/post_training/prepare_dataset.py:
tokenise with padding to ``max_length`` 512 and truncation, run the T5 encoder with the attention
mask, take ``last_hidden_state`` and set the rows at and after each prompt's true token count (the
attention mask's sum, EOS included) to 0. Unlike the reference, the model runs in bf16 on CUDA
(float32 on CPU) and prompts are batched.

Weights: a T5 folder (``google-t5/t5-11b`` layout: config.json, weights and tokenizer files side by
side) or a diffusers model-repo root (``text_encoder/`` + ``tokenizer/``, as
``nvidia/Cosmos-1.0-Diffusion-7B-Text2World``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .sample_format import T5_DIM, T5_MAX_LENGTH, TENSOR_DTYPE

_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


class TextEncoderLoadError(RuntimeError):
    """A text-encoder folder is missing, incomplete or holds the wrong model; names the folder."""


def default_dtype(device: torch.device | str) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def find_folders(path: str | os.PathLike) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a T5 folder or a diffusers model-repo root."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TextEncoderLoadError(f"{folder}: text encoder folder does not exist")
    if (folder / "config.json").is_file():
        model_dir, tok_dir = folder, folder
    elif (folder / "text_encoder" / "config.json").is_file():
        model_dir, tok_dir = folder / "text_encoder", folder / "tokenizer"
    else:
        raise TextEncoderLoadError(
            f"{folder}: not a T5 folder (config.json) nor a diffusers model repo (text_encoder/config.json)"
        )
    if not any((tok_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise TextEncoderLoadError(f"{tok_dir}: no T5 tokenizer files (expected one of {list(_TOKENIZER_FILES)})")
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TextEncoderLoadError(f"{model_dir / 'config.json'}: not readable JSON ({exc})") from exc
    if config.get("model_type") != "t5":
        raise TextEncoderLoadError(f"{model_dir / 'config.json'}: model_type {config.get('model_type')!r}, expected 't5'")
    if config.get("d_model") != T5_DIM:
        raise TextEncoderLoadError(
            f"{model_dir / 'config.json'}: d_model {config.get('d_model')}, the sample format needs {T5_DIM} (T5-11B)"
        )
    return model_dir, tok_dir


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` on transformers >= 4.56, ``torch_dtype=`` before."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


class TextEncoder:
    """T5 encoder + tokenizer producing the (512, 1024) prompt embeddings of a sample."""

    def __init__(self, model, tokenizer, *, device: torch.device, dtype: torch.dtype, folder: Path):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.folder = folder

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> "TextEncoder":
        from transformers import AutoTokenizer, T5EncoderModel

        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        model_dir, tok_dir = find_folders(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - report which folder failed and why
            raise TextEncoderLoadError(f"{tok_dir}: cannot load the T5 tokenizer ({exc.__class__.__name__}: {str(exc)[:300]})") from exc
        try:
            model = T5EncoderModel.from_pretrained(model_dir, local_files_only=True, **_dtype_kwarg(dtype))
        except Exception as exc:  # noqa: BLE001
            raise TextEncoderLoadError(f"{model_dir}: cannot load the T5 encoder ({exc.__class__.__name__}: {str(exc)[:300]})") from exc
        if model.config.d_model != T5_DIM:
            raise TextEncoderLoadError(f"{model_dir}: d_model {model.config.d_model}, the sample format needs {T5_DIM}")
        model = model.to(device).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return cls(model, tokenizer, device=device, dtype=dtype, folder=Path(path))

    @torch.inference_mode()
    def encode(self, prompts: list[str], batch_size: int = 8) -> torch.Tensor:
        """(N, 512, 1024) bfloat16 CPU embeddings; rows at and after each prompt's token count are 0."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        prompts = list(prompts)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} is empty or not a string: {prompt!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = torch.zeros(len(prompts), T5_MAX_LENGTH, T5_DIM, dtype=TENSOR_DTYPE)
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            tokens = self.tokenizer(
                batch,
                return_tensors="pt",
                truncation=True,
                padding="max_length",
                max_length=T5_MAX_LENGTH,
            )
            input_ids = tokens["input_ids"].to(self.device, non_blocking=True)
            mask = tokens["attention_mask"].to(self.device, non_blocking=True)
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            lengths = tokens["attention_mask"].sum(dim=1)
            keep = torch.arange(T5_MAX_LENGTH, device=hidden.device)[None, :] < lengths.to(hidden.device)[:, None]
            hidden = hidden.masked_fill(~keep[:, :, None], 0)
            out[start:start + len(batch)] = hidden.to("cpu", TENSOR_DTYPE)
        return out

    def __repr__(self) -> str:
        return f"TextEncoder(folder={str(self.folder)!r}, device={self.device}, dtype={self.dtype})"
