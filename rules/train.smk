# Post-training (cosmos_lib.train, docs/training.md): results/dataset -> a Cosmos-1.0 DiT run in
# results/train/<run_name>/ with NeMo 2 style checkpoints under checkpoints/step=<N>/.
# The rule's output is the run's summary.json, not the checkpoints: Snakemake deletes outputs
# before a job starts, and a re-run after a kill must resume from the latest complete checkpoint.

import os.path

TRAIN = config["train"]
TRAIN_RUN_DIR = f"{RESULTS}/train/{TRAIN['run_name']}"
TRAIN_SUMMARY = f"{TRAIN_RUN_DIR}/summary.json"
TRAIN_EXPORT = f"{TRAIN_RUN_DIR}/export/transformer"
TRAIN_PRETRAINED = TRAIN["model"] not in ("tiny", "7B", "14B")
TRAIN_ON_GPU = TRAIN["device"] != "cpu"


localrules:
    train_check,


rule train_check:
    """Check the sample folder against the model (complete samples, shapes) before any GPU job."""
    input:
        dataset=DATASET_MANIFEST,
        model=[model_manifest("diffusion_model")] if TRAIN_PRETRAINED else [],
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
    output:
        TRAIN_SUMMARY,
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        train=TRAIN,
    log:
        f"{LOGS}/train/{TRAIN['run_name']}.log",
    threads: TRAIN["resources"]["threads"]
    resources:
        gpu=TRAIN["nproc_per_node"] if TRAIN_ON_GPU else 0,
        gpu_model=TRAIN["resources"]["gpu_model"] or None,
        nodes=TRAIN["nnodes"],
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
        mem_mb=40000 if TRAIN["model"] != "tiny" else 2000,
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/export_diffusers.py"
