# Cosmos-1.0 post-training workflow: folders of MP4s -> NeMo post-training samples -> checkpoints.
#
#   snakemake --cores all                      samples of config/config.yaml's videos (target `all`)
#   snakemake --cores all train                ... and post-train on them
#   snakemake --configfile config/demo.yaml --cores 2 all train    the built-in demo
#   snakemake --workflow-profile profiles/slurm all train           on a SLURM cluster (docs/cluster.md)
#
# Rules live in rules/*.smk; the work is done by the cosmos_lib package.


include: "rules/common.smk"
include: "rules/download.smk"
if DEMO:

    include: "rules/demo.smk"

include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/convert.smk"


# A local run's encode workers (one tokenizer per GPU, cosmos_lib/encode_worker.py) end with it.
onsuccess:
    encode_worker.stop_workers()


onerror:
    encode_worker.stop_workers()


localrules:
    all,
    download_model,
    dataset,


rule all:
    default_target: True
    input:
        DATASET_MANIFEST,
        SUMMARY,
