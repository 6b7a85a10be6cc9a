"""Snakemake script of rule export: latest complete checkpoint -> diffusers transformer/ folder."""

import logging

from cosmos_lib.train.export import export

sm = snakemake  # noqa: F821 - provided by Snakemake
logging.basicConfig(filename=sm.log[0], level=logging.INFO)
out = export(sm.params.run_dir, sm.output[0], dtype=sm.params.dtype)
logging.info("exported %s", out)
