"""Snakemake script of rule demo_models: tiny random-weight models in the real on-disk formats."""

from cosmos_lib.logs import setup_job_logging
from cosmos_lib.tiny_models import save_tiny_t5, save_tiny_tokenizer_diffusers, save_tiny_tokenizer_torchscript

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
save_tiny_tokenizer_torchscript(sm.output.tokenizer_torchscript)
save_tiny_tokenizer_diffusers(sm.output.tokenizer_diffusers)
save_tiny_t5(sm.output.text_encoder)
