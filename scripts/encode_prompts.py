"""Snakemake script of rule encode_prompts: every distinct prompt -> its T5 embedding, T5 loaded once."""

from cosmos_lib.hub import read_manifest
from cosmos_lib.logs import setup_job_logging
from cosmos_lib.preprocess import encode_prompts, pick_device
from cosmos_lib.text_encoder import TextEncoder

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
encoder = TextEncoder.load(read_manifest(sm.input.manifest), device=pick_device(sm.params.device))
encode_prompts(encoder, sm.params.prompts, sm.output[0], batch_size=sm.params.batch_size)
