"""Snakemake script of rule demo_video: one synthetic demo video."""

from cosmos_lib.demo_inputs import make_demo_video
from cosmos_lib.logs import setup_job_logging

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
make_demo_video(sm.output[0], seed=sm.params.seed)
