"""The Cosmos-1.0 DiT: one place for its configurations, building and loading.

The network is diffusers' ``CosmosTransformer3DModel``. The 7B/14B configurations are those of
diffusers' ``scripts/convert_cosmos_to_diffusers.py`` (``TRANSFORMER_CONFIGS``, Cosmos-1.0
entries), which reproduce NVIDIA's Cosmos-1.0 DiT (cosmos1/models/diffusion/networks/general_dit.py):
28 layers x 32 heads x 128 (7B), 36 x 40 x 128 (14B), FFN 4x, AdaLN-LoRA 256, patch (1, 2, 2),
T5 text dim 1024, padding mask concatenated to the input. Video2World adds one input channel,
the condition mask (diffusers ``condition_mask``; NeMo's ``condition_video_input_mask``).

``train.model`` is ``tiny``, ``7B`` or ``14B`` (random initialisation of that architecture) or a
diffusers-format Cosmos model folder whose ``transformer/`` subfolder holds the weights.
``train.init_from`` (or a ``train.model`` folder that holds one) may instead be a NeMo
checkpoint folder, torch_dist or zarr, as NVIDIA ships them in ``nemo/`` of
nvidia/Cosmos-1.0-Diffusion-* and as this trainer writes them: the counterpart of the reference
recipes' ``resume.restore_config.path`` (NeMo ``cosmos_diffusion_*_finetune``), read through
:mod:`cosmos_lib.nemo_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import types
from pathlib import Path
from typing import Any

import torch

from cosmos_lib import nemo_checkpoint

TASKS = ("text2world", "video2world")
LATENT_CHANNELS = 16

_COMMON = dict(
    out_channels=LATENT_CHANNELS,
    mlp_ratio=4.0,
    text_embed_dim=1024,
    max_size=(128, 240, 240),
    patch_size=(1, 2, 2),
    concat_padding_mask=True,
    extra_pos_embed_type="learnable",
)

#: architecture by size name; ``in_channels`` comes from the task (see :func:`transformer_config`)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "7B": dict(_COMMON, num_attention_heads=32, attention_head_dim=128, num_layers=28, adaln_lora_dim=256,
               rope_scale=(2.0, 1.0, 1.0)),
    "14B": dict(_COMMON, num_attention_heads=40, attention_head_dim=128, num_layers=36, adaln_lora_dim=256,
                rope_scale=(2.0, 2.0, 2.0)),
    # demo and tests: same classes and code paths, a few hundred thousand parameters
    "tiny": dict(_COMMON, num_attention_heads=2, attention_head_dim=32, num_layers=2, adaln_lora_dim=8,
                 rope_scale=(2.0, 1.0, 1.0)),
}

#: diffusers-format model repos of Cosmos-1.0 (the ``transformer/`` subfolder is the DiT)
PRETRAINED = {
    ("7B", "text2world"): "nvidia/Cosmos-1.0-Diffusion-7B-Text2World",
    ("7B", "video2world"): "nvidia/Cosmos-1.0-Diffusion-7B-Video2World",
    ("14B", "text2world"): "nvidia/Cosmos-1.0-Diffusion-14B-Text2World",
    ("14B", "video2world"): "nvidia/Cosmos-1.0-Diffusion-14B-Video2World",
}


def in_channels(task: str) -> int:
    """16 latent channels; Video2World adds the condition-mask channel (17)."""
    if task not in TASKS:
        raise ValueError(f"train.task must be one of {TASKS}, got {task!r}")
    return LATENT_CHANNELS + (1 if task == "video2world" else 0)


def is_random_init(model: str) -> bool:
    return model in ARCHITECTURES


def transformer_config(size: str, task: str) -> dict[str, Any]:
    """The ``CosmosTransformer3DModel`` config of an architecture for a task."""
    if size not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {size!r}; one of {sorted(ARCHITECTURES)}")
    return dict(ARCHITECTURES[size], in_channels=in_channels(task))


# --- torchvision-free nearest resize ---------------------------------------------------------
def _nearest_resize(img: torch.Tensor, size, interpolation=None, **_: Any) -> torch.Tensor:
    """``torchvision.transforms.functional.resize(img, size, NEAREST)`` for tensors.

    torchvision resizes tensors with ``torch.nn.functional.interpolate(mode="nearest")``
    (torchvision/transforms/_functional_tensor.py ``resize``); this does the same.
    """
    size = [int(s) for s in size]
    if list(img.shape[-2:]) == size:
        return img
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    out = torch.nn.functional.interpolate(x.float() if x.dtype == torch.bool else x, size=size, mode="nearest")
    out = out.to(img.dtype)
    return out.squeeze(0) if squeeze else out


_TRANSFORMS_SHIM = types.SimpleNamespace(
    functional=types.SimpleNamespace(resize=_nearest_resize),
    InterpolationMode=types.SimpleNamespace(NEAREST="nearest"),
)


def install_padding_mask_resize() -> None:
    """Give diffusers' Cosmos transformer its padding-mask resize when torchvision is absent.

    diffusers (models/transformers/transformer_cosmos.py) imports ``torchvision.transforms`` only
    if torchvision is installed and then calls ``transforms.functional.resize(..., NEAREST)`` on
    the padding mask when ``concat_padding_mask`` is set (it is, for every Cosmos-1.0 model).
    Without torchvision that name is undefined; we bind it to an equivalent nearest resize.
    """
    from diffusers.models.transformers import transformer_cosmos

    if not hasattr(transformer_cosmos, "transforms"):
        transformer_cosmos.transforms = _TRANSFORMS_SHIM


def transformer_class():
    install_padding_mask_resize()
    from diffusers import CosmosTransformer3DModel

    return CosmosTransformer3DModel


# --- building --------------------------------------------------------------------------------
def pretrained_transformer_dir(model_dir: str | os.PathLike) -> Path:
    """The ``transformer/`` folder of a diffusers-format model folder (or that folder itself)."""
    root = Path(model_dir)
    for cand in (root / "transformer", root):
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"{root}: no transformer/config.json (expected a diffusers-format Cosmos model folder)")


def weights_source(model: str, model_dir: str | os.PathLike | None = None,
                   init_from: str | os.PathLike | None = None) -> str | os.PathLike | None:
    """Where the starting weights come from: ``init_from`` when set, else the pretrained model's
    local folder, else None (random initialisation of a built-in architecture)."""
    if init_from:
        return init_from
    if is_random_init(model):
        return None
    if model_dir is None:
        raise ValueError(f"train.model={model!r} is pretrained: pass its local folder (from the download manifest)")
    return model_dir


def _nemo_tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of a NeMo ``weights/`` folder's model tensors from its metadata only (no tensor data)."""
    from cosmos_lib.nemo_convert import EXTRA_STATE

    if nemo_checkpoint.read_backend(weights) == "zarr":
        return {p.name: tuple(json.loads((p / ".zarray").read_text())["shape"]) for p in weights.iterdir()
                if (p / ".zarray").is_file() and EXTRA_STATE not in p.name}
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(weights)).read_metadata().state_dict_metadata
    return {k: tuple(md.size) for k, md in meta.items()
            if isinstance(md, TensorStorageMetadata) and EXTRA_STATE not in k and not k.startswith("optimizer")}


def nemo_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``CosmosTransformer3DModel`` config of a NeMo checkpoint, without reading its tensors.

    ``context/model_config.json`` next to ``weights/`` when there is one (this trainer's
    checkpoints, ``convert_checkpoint.py diffusers-to-nemo``); otherwise the shapes in the metadata
    give the dimensions and :func:`cosmos_lib.nemo_layout.diffusers_config_for` the published
    variant they match (the config :func:`cosmos_lib.nemo_checkpoint.load_nemo_as_diffusers` gives).
    """
    from cosmos_lib.nemo_layout import diffusers_config_for, dims_from_nemo_shapes

    weights = nemo_checkpoint.find_weights_dir(model_dir)
    context = weights.parent / "context" / "model_config.json"
    if context.is_file():
        return {k: v for k, v in json.loads(context.read_text()).items() if not k.startswith("_")}
    try:
        return diffusers_config_for(dims_from_nemo_shapes(_nemo_tensor_shapes(weights)))
    except (KeyError, ValueError) as err:
        raise ValueError(f"{weights}: not a Cosmos-1.0 DiT NeMo checkpoint ({err})") from err


def resolve_config(model: str, task: str, model_dir: str | os.PathLike | None = None,
                   init_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Model config for ``train.model`` / ``train.init_from``: a built-in architecture, a NeMo
    checkpoint's (checked first) or the pretrained diffusers folder's config."""
    source = weights_source(model, model_dir, init_from)
    if source is None:
        return transformer_config(model, task)
    if nemo_checkpoint.is_nemo_checkpoint(source):
        cfg_path = nemo_checkpoint.find_weights_dir(source)
        cfg = nemo_model_config(source)
    elif init_from:
        raise FileNotFoundError(f"train.init_from={str(init_from)!r}: not a NeMo checkpoint folder (no weights/ with "
                                "metadata.json and NeMo-keyed tensors, here or in weights/, nemo/weights/, nemo/)")
    else:
        cfg_path = pretrained_transformer_dir(source) / "config.json"
        cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_")}
    if cfg.get("in_channels") != in_channels(task):
        raise ValueError(
            f"{cfg_path}: in_channels={cfg.get('in_channels')} but task {task!r} needs {in_channels(task)} "
            "(Text2World 16, Video2World 17): pick the model that matches train.task"
        )
    return cfg


def build_model(config: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A ``CosmosTransformer3DModel`` from a config; ``device='meta'`` allocates nothing."""
    cls = transformer_class()
    with torch.device(device):
        model = cls(**config)
    return model.to(dtype) if device != "meta" and dtype != torch.float32 else model


def random_state_dict(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of a freshly initialised model, seeded.

    diffusers' own initialisation, except the learnable positional embeddings: diffusers starts
    them at zero, where their normalisation (divide by the norm + 1e-6) has gradients of order
    1e6; Cosmos initialises them with a truncated normal of std 1/sqrt(hidden)
    (cosmos1/models/diffusion/module/position_embedding.py ``LearnablePosEmbAxis``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config, "cpu")
        pos = getattr(model, "learnable_pos_embed", None)
        if pos is not None:
            std = 1.0 / math.sqrt(pos.pos_emb_t.shape[-1])
            for p in (pos.pos_emb_t, pos.pos_emb_h, pos.pos_emb_w):
                torch.nn.init.trunc_normal_(p.data, std=std, a=-2 * std, b=2 * std)
        return model.state_dict()


def pretrained_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Full state dict (diffusers names, fp32) of a NeMo checkpoint folder (checked first; both
    backends) or of a diffusers model's ``transformer/`` (safetensors shards or a .bin)."""
    from diffusers.models.model_loading_utils import load_state_dict

    if nemo_checkpoint.is_nemo_checkpoint(model_dir):
        sd, _ = nemo_checkpoint.load_nemo_as_diffusers(model_dir, dtype=torch.float32)
        return sd
    tdir = pretrained_transformer_dir(model_dir)
    index = sorted(tdir.glob("*.safetensors.index.json"))
    if index:
        files = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(tdir.glob("*.safetensors"))] or [p.name for p in sorted(tdir.glob("*.bin"))]
    if not files:
        raise FileNotFoundError(f"{tdir}: no weights (*.safetensors or *.bin)")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        out.update({k: v.float() for k, v in load_state_dict(str(tdir / name)).items()})
    return out


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
