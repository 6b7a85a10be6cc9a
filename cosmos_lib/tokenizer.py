"""The Cosmos-1.0 continuous video tokenizer CV8x8x8, encoder side, from either on-disk form.

Two forms hold the same network and give the same normalised latent:

* TorchScript (``nvidia/Cosmos-1.0-Tokenizer-CV8x8x8``): ``encoder.jit`` and ``mean_std.pt``.
  ``mean_std.pt`` is a pair ``(mean, std)`` of 16*16 values, channel-major (per channel, per latent
  frame); the reference reads it as ``.view(16, -1)[:, :T']`` (cosmos1/models/diffusion/module/
  pretrained_vae.py, ``register_mean_std``). ``encoder.jit`` returns either the latent or a tuple
  whose first item is the latent (``(z, (mean, logvar))`` of the continuous tokenizer's identity
  "distribution"); the reference takes item 0 of a tuple.
* diffusers ``AutoencoderKLCosmos`` (``vae/`` of ``nvidia/Cosmos-1.0-Diffusion-*``): ``config.json``
  with ``latents_mean``/``latents_std`` (16*16 values, same channel-major layout, as diffusers'
  Cosmos video2world pipeline reads them), weights in ``diffusion_pytorch_model*.safetensors``.
  Only the encoder and ``quant_conv`` are loaded; the decoder is never built in memory.

:meth:`VideoTokenizer.encode` returns ``(z - mean[c, t]) / std[c, t]`` for the first T' latent frames,
without any sigma_data factor: the cached sample format of ``prepare_dataset.py`` (see
../shared/DESIGN.md and ``sample_format``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .sample_format import LATENT_CHANNELS, latent_shape

TORCHSCRIPT_ENCODER = "encoder.jit"
TORCHSCRIPT_MEAN_STD = "mean_std.pt"
DIFFUSERS_CLASS = "AutoencoderKLCosmos"
_ENCODER_PREFIXES = ("encoder.", "quant_conv.")


class TokenizerLoadError(RuntimeError):
    """A tokenizer folder is missing, incomplete or corrupt; the message names the folder or file."""


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA; float32 elsewhere (diffusers' avg_pool3d has no bf16 CPU kernel)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _stats_table(values, what: str) -> torch.Tensor:
    """Latent statistics as a float32 (16, frames) table: channel-major, as the reference views them."""
    tensor = torch.as_tensor(values, dtype=torch.float32).detach().cpu().reshape(-1)
    if tensor.numel() == 0 or tensor.numel() % LATENT_CHANNELS:
        raise TokenizerLoadError(f"{what}: {tensor.numel()} values, expected a multiple of {LATENT_CHANNELS} (channels x frames)")
    if not torch.isfinite(tensor).all():
        raise TokenizerLoadError(f"{what}: holds NaN or infinite values")
    return tensor.reshape(LATENT_CHANNELS, -1).contiguous()


def _check_std(std: torch.Tensor, what: str) -> None:
    if (std <= 0).any():
        raise TokenizerLoadError(f"{what}: latent std has values <= 0")


class _DiffusersEncoder(torch.nn.Module):
    """The encode path of AutoencoderKLCosmos (``quant_conv(encoder(x))``, its ``_encode``)."""

    def __init__(self, encoder: torch.nn.Module, quant_conv: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))


def find_form(path: str | os.PathLike) -> tuple[str, Path]:
    """(``"torchscript"`` | ``"diffusers"``, folder) of a tokenizer folder or a model-repo root with ``vae/``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TokenizerLoadError(f"{folder}: tokenizer folder does not exist")
    has_jit = (folder / TORCHSCRIPT_ENCODER).exists()
    has_stats = (folder / TORCHSCRIPT_MEAN_STD).exists()
    if has_jit or has_stats:
        missing = [n for n, ok in ((TORCHSCRIPT_ENCODER, has_jit), (TORCHSCRIPT_MEAN_STD, has_stats)) if not ok]
        if missing:
            raise TokenizerLoadError(f"{folder}: TorchScript tokenizer is incomplete, {missing[0]} is missing")
        return "torchscript", folder
    config = folder / "config.json"
    if config.is_file():
        class_name = _read_config(config).get("_class_name")
        if class_name == DIFFUSERS_CLASS:
            return "diffusers", folder
        if not (folder / "vae" / "config.json").is_file():
            raise TokenizerLoadError(f"{config}: _class_name is {class_name!r}, expected {DIFFUSERS_CLASS!r}")
    if (folder / "vae").is_dir():
        return find_form(folder / "vae")
    raise TokenizerLoadError(
        f"{folder}: not a Cosmos video tokenizer folder: expected {TORCHSCRIPT_ENCODER} + {TORCHSCRIPT_MEAN_STD} "
        f"(TorchScript), config.json of {DIFFUSERS_CLASS} (diffusers), or a model repo with vae/"
    )


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TokenizerLoadError(f"{path}: not a JSON object")
    return data


def _load_torchscript(folder: Path, device: torch.device, dtype: torch.dtype):
    jit_path = folder / TORCHSCRIPT_ENCODER
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the format of these weights
            encoder = torch.jit.load(str(jit_path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise TokenizerLoadError(f"{jit_path}: cannot be loaded as TorchScript ({exc.__class__.__name__}: {str(exc)[:300]})") from exc
    encoder = encoder.to(dtype).eval()
    for param in encoder.parameters():
        param.requires_grad_(False)
    stats_path = folder / TORCHSCRIPT_MEAN_STD
    try:
        stats = torch.load(stats_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise TokenizerLoadError(f"{stats_path}: cannot be read ({exc.__class__.__name__}: {str(exc)[:300]})") from exc
    if not (isinstance(stats, (tuple, list)) and len(stats) == 2 and all(isinstance(t, torch.Tensor) for t in stats)):
        raise TokenizerLoadError(f"{stats_path}: expected a pair (mean, std) of tensors, found {type(stats).__name__}")
    mean = _stats_table(stats[0], f"{stats_path} (mean)")
    std = _stats_table(stats[1], f"{stats_path} (std)")
    return encoder, mean, std


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_config(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise TokenizerLoadError(f"{index}: has no weight_map")
        return sorted({folder / name for key, name in weight_map.items() if key.startswith(_ENCODER_PREFIXES)})
    single = folder / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise TokenizerLoadError(f"{folder}: no diffusion_pytorch_model*.safetensors weights in this VAE folder")
    return found


def _load_diffusers(folder: Path, device: torch.device, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLCosmos
    from safetensors import safe_open

    config_path = folder / "config.json"
    config = _read_config(config_path)
    for key in ("latents_mean", "latents_std"):
        if config.get(key) is None:
            raise TokenizerLoadError(f"{config_path}: has no {key}; the latent statistics are needed to normalise")
    if config.get("latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
        raise TokenizerLoadError(f"{config_path}: latent_channels {config.get('latent_channels')}, expected {LATENT_CHANNELS}")
    mean = _stats_table(config["latents_mean"], f"{config_path} (latents_mean)")
    std = _stats_table(config["latents_std"], f"{config_path} (latents_std)")
    try:
        init_kwargs = AutoencoderKLCosmos.extract_init_dict(config)[0]
        # parameters on the meta device (no memory, no random init); buffers (the wavelets) real
        with init_empty_weights(include_buffers=False):
            vae = AutoencoderKLCosmos(**init_kwargs)
    except Exception as exc:  # noqa: BLE001
        raise TokenizerLoadError(f"{config_path}: cannot build {DIFFUSERS_CLASS} from it ({exc.__class__.__name__}: {exc})") from exc
    module = _DiffusersEncoder(vae.encoder, vae.quant_conv)
    del vae  # the decoder never had real weights; drop it
    wanted = set(module.state_dict().keys())
    state: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(folder):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as fh:
                for key in fh.keys():
                    if key in wanted:
                        state[key] = fh.get_tensor(key).to(dtype)
        except Exception as exc:  # noqa: BLE001
            raise TokenizerLoadError(f"{file}: cannot be read as safetensors ({exc.__class__.__name__}: {str(exc)[:300]})") from exc
    missing = sorted(wanted - set(state))
    if missing:
        raise TokenizerLoadError(f"{folder}: weights lack {len(missing)} encoder tensors (e.g. {missing[0]!r})")
    for key in wanted:
        expected = module.state_dict()[key].shape
        if state[key].shape != expected:
            raise TokenizerLoadError(f"{folder}: tensor {key!r} has shape {tuple(state[key].shape)}, config expects {tuple(expected)}")
    module.load_state_dict(state, assign=True, strict=True)
    module = module.to(device=device, dtype=dtype).eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module, mean, std


class VideoTokenizer:
    """Encoder of the Cosmos CV8x8x8 continuous video tokenizer with its latent statistics.

    ``latent_mean``/``latent_std``: float32 (16, frames) tables on the tokenizer's device.
    """

    def __init__(self, encoder, latent_mean: torch.Tensor, latent_std: torch.Tensor, *, form: str, folder: Path,
                 device: torch.device, dtype: torch.dtype, channels_last: bool = False, compiled: bool = False):
        _check_std(latent_std, f"{folder}")
        if latent_mean.shape != latent_std.shape:
            raise TokenizerLoadError(f"{folder}: latent mean {tuple(latent_mean.shape)} and std {tuple(latent_std.shape)} differ in shape")
        self.encoder = encoder
        self.form = form
        self.folder = folder
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        #: torch.compile'd encoder: a new batch shape costs a compilation
        self.compiled = compiled
        self.latent_mean = latent_mean.to(device)
        self.latent_std = latent_std.to(device)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
             compile: bool = False, channels_last: bool = False) -> "VideoTokenizer":
        """Load the encoder side from a TorchScript folder, a diffusers VAE folder or a model-repo root.

        Only the encoder side is loaded (for the diffusers form the decoder is never materialised).
        ``compile`` wraps the diffusers encoder in ``torch.compile``; ``channels_last`` uses
        ``channels_last_3d`` memory for weights and input. Both off by default. Measured on one H100
        (real CV8x8x8 architecture, random weights, 121x704x1280, bf16): eager 0.52 s/chunk at batch 1,
        0.33 at batch 2; compile 0.30 / 0.19 after a 35-55 s first call per batch shape (results
        within bf16 noise of eager); channels_last 0.60 / 0.53, slower.
        """
        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        form, folder = find_form(path)
        if form == "torchscript":
            encoder, mean, std = _load_torchscript(folder, device, dtype)
        else:
            encoder, mean, std = _load_diffusers(folder, device, dtype)
            if channels_last:
                encoder = encoder.to(memory_format=torch.channels_last_3d)
            if compile:
                encoder = torch.compile(encoder)
        return cls(encoder, mean, std, form=form, folder=folder, device=device, dtype=dtype, channels_last=channels_last,
                   compiled=compile and form != "torchscript")

    @property
    def max_latent_frames(self) -> int:
        return self.latent_mean.shape[1]

    def _raw_latent(self, video: torch.Tensor) -> torch.Tensor:
        out = self.encoder(video)
        if isinstance(out, (tuple, list)):
            if not out or not isinstance(out[0], torch.Tensor):
                raise TokenizerLoadError(f"{self.folder}: encoder returned a {type(out).__name__} without a latent tensor first")
            out = out[0]
        elif not isinstance(out, torch.Tensor):
            raise TokenizerLoadError(f"{self.folder}: encoder returned {type(out).__name__}, not a tensor")
        return out

    @torch.inference_mode()
    def encode(self, video: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Normalised latent (B, 16, 1+(T-1)/8, H/8, W/8), float32, of a video (B, 3, T, H, W) in [-1, 1].

        ``batch_size`` splits the batch into encoder calls of at most that many videos.
        """
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
        batch, _, frames, height, width = video.shape
        expected = latent_shape(frames, height, width)
        if expected[1] > self.max_latent_frames:
            raise ValueError(
                f"{frames} frames give {expected[1]} latent frames; the latent statistics of {self.folder} cover {self.max_latent_frames}"
            )
        memory_format = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        step = batch_size or batch
        outputs = []
        for start in range(0, batch, step):
            part = video[start:start + step].to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=memory_format)
            z = self._raw_latent(part)
            if tuple(z.shape[1:]) != expected or z.shape[0] != part.shape[0]:
                raise RuntimeError(
                    f"{self.folder}: encoder gave a latent of shape {tuple(z.shape)}, expected {(part.shape[0], *expected)}"
                )
            outputs.append(self.normalise(z))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - mean[c, t]) / std[c, t]`` over the first T' latent frames, computed in float32."""
        frames = z.shape[2]
        mean = self.latent_mean[:, :frames].to(z.device)[None, :, :, None, None]
        std = self.latent_std[:, :frames].to(z.device)[None, :, :, None, None]
        return (z.float() - mean) / std

    def __repr__(self) -> str:
        return f"VideoTokenizer(form={self.form!r}, folder={str(self.folder)!r}, device={self.device}, dtype={self.dtype})"
