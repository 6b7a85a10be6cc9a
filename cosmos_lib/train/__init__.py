"""Post-training of Cosmos-1.0 diffusion models (Text2World, Video2World) on cached samples.

Split as torchtitan does: :mod:`.model` (configs, building, loading), :mod:`.parallel`
(process group, FSDP2), :mod:`.objective` (EDM loss as Cosmos-1.0/NeMo), :mod:`.data` (sample
folder, sampler), :mod:`.trainer` (loop), :mod:`.checkpoint` (NeMo 2 layout), :mod:`.export`.
Entry point: ``python -m cosmos_lib.train run|export|check`` (see docs/training.md).
"""

from .config import TrainConfig
from .model import ARCHITECTURES, build_model, transformer_config

__all__ = ["TrainConfig", "ARCHITECTURES", "build_model", "transformer_config", "train", "export"]


def train(*args, **kwargs):
    from .trainer import train as _train

    return _train(*args, **kwargs)


def export(*args, **kwargs):
    from .export import export as _export

    return _export(*args, **kwargs)
