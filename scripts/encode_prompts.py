"""Snakemake script of rule encode_prompts: T5 embeddings of the new prompts, T5 loaded once."""

import os

from cosmos_lib.hub import read_manifest
from cosmos_lib.inputs import prompts_of, videos_of_config
from cosmos_lib.logs import setup_job_logging
from cosmos_lib.preprocess import encode_prompts, pick_device
from cosmos_lib.text_encoder import TextEncoder

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
prompts = prompts_of(videos_of_config(sm.config, sm.params.demo_videos))
wanted = {os.path.basename(path).removesuffix(".pth"): os.path.dirname(path) for path in sm.output}
encoder = TextEncoder.load(read_manifest(sm.input.manifest), device=pick_device(sm.params.device))
encode_prompts(encoder, {key: prompts[key] for key in wanted}, next(iter(wanted.values())), batch_size=sm.params.batch_size)
