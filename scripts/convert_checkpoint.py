"""Convert Cosmos-1.0 DiT checkpoints between NeMo's layout and diffusers' (cosmos_lib.nemo_checkpoint).

  python scripts/convert_checkpoint.py nemo-to-diffusers NEMO_DIR OUT_DIR [--variant 7B-Text2World] [--dtype bfloat16]
  python scripts/convert_checkpoint.py diffusers-to-nemo DIFFUSERS_DIR OUT_DIR [--backend torch_dist|zarr] [--dtype ...]

NEMO_DIR: a NeMo ``weights`` folder, a NeMo checkpoint folder holding ``weights/``, or a Hugging Face
snapshot of nvidia/Cosmos-1.0-Diffusion-* holding ``nemo/``. DIFFUSERS_DIR: a diffusers model folder,
its ``transformer/`` folder, or a cosmos_lib training checkpoint with diffusers-keyed weights.
Also runs as the Snakemake script of rules/convert.smk.
"""

import argparse
import logging
import sys

import torch

from cosmos_lib import nemo_checkpoint
from cosmos_lib.nemo_layout import VARIANTS

DTYPES = {"keep": None, "bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def run(direction: str, src: str, out: str, *, variant: str | None, dtype: str, backend: str, offdiag: str) -> None:
    log = logging.getLogger("convert_checkpoint")
    if direction == "nemo-to-diffusers":
        path = nemo_checkpoint.export_nemo_to_diffusers(src, out, variant=variant or None, dtype=DTYPES[dtype],
                                                        offdiag=offdiag)
    elif direction == "diffusers-to-nemo":
        path = nemo_checkpoint.export_diffusers_to_nemo(src, out, backend=backend, dtype=DTYPES[dtype])
    else:
        raise ValueError(f"unknown direction {direction!r}")
    log.info("%s: %s -> %s", direction, src, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=["nemo-to-diffusers", "diffusers-to-nemo"])
    parser.add_argument("src")
    parser.add_argument("out", help="output folder (must not exist; written atomically)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                        help="nemo-to-diffusers: published model whose config (rope_scale) to use; default: by shapes")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="keep")
    parser.add_argument("--backend", choices=list(nemo_checkpoint.BACKENDS), default="torch_dist",
                        help="diffusers-to-nemo: sharded backend of the written weights/")
    parser.add_argument("--offdiag", choices=["error", "drop"], default="error",
                        help="nemo-to-diffusers: what to do with non-zero off-diagonal fused AdaLN-LoRA blocks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        run(args.direction, args.src, args.out, variant=args.variant, dtype=args.dtype, backend=args.backend,
            offdiag=args.offdiag)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if "snakemake" in globals():
        from cosmos_lib.logs import setup_job_logging

        sm = snakemake  # noqa: F821 - provided by Snakemake
        setup_job_logging(sm.log[0])
        run(sm.params.direction, str(sm.input[0]), str(sm.output[0]), variant=sm.params.get("variant"),
            dtype=sm.params.get("dtype", "keep"), backend=sm.params.get("backend", "torch_dist"),
            offdiag=sm.params.get("offdiag", "error"))
    else:
        sys.exit(main())
