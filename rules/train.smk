# Post-training (cosmos_lib.train, docs/training.md): results/dataset -> a Cosmos-1.0 DiT run in
# results/train/<run_name>/ with NeMo 2 style checkpoints under checkpoints/step=<N>/.
# The rule's output is the run's summary.json, not the checkpoints: Snakemake deletes outputs
# before a job starts, and a re-run after a kill must resume from the latest complete checkpoint.

import os.path

from cosmos_lib.launch import slurm_resources

TRAIN = config["train"]
TRAIN_RUN_DIR = f"{RESULTS}/train/{TRAIN['run_name']}"
TRAIN_SUMMARY = f"{TRAIN_RUN_DIR}/summary.json"
TRAIN_EXPORT = f"{TRAIN_RUN_DIR}/export/transformer"
# init_from (a local NeMo checkpoint folder) replaces model: nothing to download then
TRAIN_INIT_FROM = [TRAIN["init_from"]] if TRAIN["init_from"] else []
TRAIN_PRETRAINED = not TRAIN_INIT_FROM and TRAIN["model"] not in ("tiny", "7B", "14B")


localrules:
    train_check,


rule train_check:
    """Check the sample folder against the model (complete samples, shapes) before any GPU job."""
    input:
        dataset=DATASET_MANIFEST,
        model=[model_manifest("diffusion_model")] if TRAIN_PRETRAINED else [],
        init_from=TRAIN_INIT_FROM,
    output:
        f"{TRAIN_RUN_DIR}/dataset_check.txt",
    params:
        train=TRAIN,
    log:
        f"{LOGS}/train/{TRAIN['run_name']}_check.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train.py"


rule train:
    """Post-train with torchrun (FSDP2, one process per GPU); resumes from the latest complete
    checkpoint of the run. Loss, grad norm, lr, samples/s, MFU and GPU memory go to the log."""
    input:
        check=rules.train_check.output,
        dataset=DATASET_MANIFEST,
        model=[model_manifest("diffusion_model")] if TRAIN_PRETRAINED else [],
        init_from=TRAIN_INIT_FROM,
    output:
        TRAIN_SUMMARY,
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        train=TRAIN,
    log:
        f"{LOGS}/train/{TRAIN['run_name']}.log",
    threads: TRAIN["resources"]["threads"]
    resources:
        # one node: gpu (+ gpu_model) and nodes=1; several: nodes, gres per node, one task per node
        **slurm_resources(
            TRAIN["nproc_per_node"],
            TRAIN["nnodes"],
            TRAIN["device"],
            gpu_model=TRAIN["resources"]["gpu_model"] or None,
        ),
        mem_mb=TRAIN["resources"]["mem_mb"],
        runtime=TRAIN["resources"]["runtime"],
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train.py"


rule export:
    """The run's latest complete checkpoint as a diffusers transformer/ folder
    (CosmosTransformer3DModel.from_pretrained; CosmosTextToWorld/VideoToWorldPipeline)."""
    input:
        TRAIN_SUMMARY,
    output:
        directory(TRAIN_EXPORT),
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input[0]),
        dtype="float32" if TRAIN["model"] == "tiny" else "bfloat16",
    log:
        f"{LOGS}/train/{TRAIN['run_name']}_export.log",
    resources:
        # one copy of the weights in bf16 + the split attention heads (14B: about 38 GB)
        mem_mb=64000 if TRAIN["model"] != "tiny" else 2000,
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/export_diffusers.py"
