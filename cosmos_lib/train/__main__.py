"""Command line: ``python -m cosmos_lib.train {run,export,check,torchrun-args}``.

``run`` is what each torchrun process executes; ``export`` writes a diffusers ``transformer/``
folder from a checkpoint; ``check`` validates a sample folder against the model without training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config(args):
    from .config import TrainConfig

    text = Path(args.config).read_text() if args.config else (args.config_json or "{}")
    return TrainConfig.from_json(text)


def _dataset(args) -> str:
    if args.dataset:
        return args.dataset
    return json.loads(Path(args.dataset_manifest).read_text())["dataset"]


def _model_dir(args):
    if not args.model_manifest:
        return None
    from cosmos_lib.hub import read_manifest

    return str(read_manifest(args.model_manifest, "diffusion_model"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cosmos_lib.train")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "check"):
        s = sub.add_parser(name)
        s.add_argument("--config", help="JSON file with the train block")
        s.add_argument("--config-json", help="the train block as a JSON string")
        where = s.add_mutually_exclusive_group(required=True)
        where.add_argument("--dataset", help="flat sample folder")
        where.add_argument("--dataset-manifest", help="the dataset rule's manifest (JSON with key 'dataset')")
        s.add_argument("--model-manifest", help="download manifest of the pretrained model (JSON)")
        if name == "run":
            s.add_argument("--run-dir", required=True)
            s.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    e = sub.add_parser("export")
    e.add_argument("--checkpoint", required=True, help="step=<N> folder, or a run folder (latest complete)")
    e.add_argument("--out", required=True, help="the transformer/ folder to write")
    e.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = p.parse_args(argv)

    if args.cmd == "run":
        from .trainer import train

        train(_config(args), dataset=_dataset(args), run_dir=args.run_dir, model_dir=_model_dir(args),
              stop_after=args.stop_after)
    elif args.cmd == "check":
        from .data import check_dataset
        from .model import resolve_config

        from .checkpoint import check_world_size

        cfg = _config(args)
        model_config = resolve_config(cfg.model, cfg.task, _model_dir(args), cfg.init_from)
        world = cfg.nproc_per_node * cfg.nnodes  # what the train job will run: fail here, before it is queued
        cfg.accumulation(world)
        check_world_size(model_config, world)
        prefixes, shape = check_dataset(_dataset(args), model_config,
                                        video2world=cfg.task == "video2world",
                                        min_condition_frames=cfg.objective.condition_frames_min)
        print(f"{_dataset(args)}: {len(prefixes)} samples, latent {shape}")
    else:
        from .export import export

        print(export(args.checkpoint, args.out, dtype=args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
