"""Snakemake script of rule dataset: the flat NeMo folder, its manifest and the summary."""

import json

from cosmos_lib import dataset
from cosmos_lib.logs import setup_job_logging
from cosmos_lib.sample_format import atomic_write_text

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
reports = dataset.read_reports(sm.input.reports)
dataset.sync_dataset(reports, sm.params.samples_dir, sm.params.dataset_dir)
summary = dataset.summary_tsv(reports)
atomic_write_text(sm.output.summary, summary)
atomic_write_text(sm.output.manifest, json.dumps(dataset.manifest(reports, sm.params.dataset_dir), indent=1) + "\n")
with open(sm.log[0], "a", encoding="utf-8") as fh:
    fh.write(summary)
