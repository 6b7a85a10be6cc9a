"""Snakemake script of rule download_model: fetch a model into the hub cache, record its local path."""

from cosmos_lib.hub import fetch, write_manifest
from cosmos_lib.logs import setup_job_logging

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
role = sm.wildcards.role
local_path = fetch(sm.params.source, role=role, allow_download=True)
write_manifest(sm.output[0], sm.params.source, role, local_path)
