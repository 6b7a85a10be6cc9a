import os
import re
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow imports cosmos_lib from this checkout. Script jobs find it through the link
# scripts/cosmos_lib (Snakemake puts a script's folder on its path), also in per-rule conda envs.
sys.path.insert(0, workflow.basedir)

from cosmos_lib import demo_inputs, encode_worker, sample_format
from cosmos_lib.hub import parse_source
from cosmos_lib.inputs import prompts_of, videos_of_config

# The Snakemake that runs a SLURM job's batch script starts the job's encode workers, so that they
# outlive the job step (srun) of the video that needed one first: cosmos_lib/encode_worker.py.
if workflow.remote_exec:
    encode_worker.offer_spawner()


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "../config/schemas/config.schema.yaml")
validate(config["train"], "../config/schemas/train.schema.yaml")

# num_frames is 1 + 8k and frames are whole latent patches: check before any job starts
sample_format.latent_shape(config["num_frames"], config["height"], config["width"])
if config["conditioning_frames"] > config["num_frames"]:
    raise ValueError("conditioning_frames must not exceed num_frames")

RESULTS = "results"
SAMPLES_DIR = f"{RESULTS}/samples"
REPORTS_DIR = f"{RESULTS}/reports"
TEXT_DIR = f"{RESULTS}/text_embeddings"
DATASET_DIR = f"{RESULTS}/dataset"
DATASET_MANIFEST = f"{RESULTS}/manifest.json"
SUMMARY = f"{RESULTS}/summary.tsv"
LOGS = "logs"

# The dataset folder is kept in step by rule dataset rather than rebuilt (see cosmos_lib.dataset),
# so it is not an output Snakemake tracks: if someone deleted it, make the rule run again.
if os.path.exists(DATASET_MANIFEST) and not os.path.isdir(DATASET_DIR):
    os.unlink(DATASET_MANIFEST)

DEMO = config["demo"]
# encode jobs ask for a GPU unless they are told to run on the CPU
GPUS_PER_ENCODE_JOB = 0 if config["encode"]["device"] == "cpu" else 1
VIDEOS_DIR = config["videos"]

# Every video of the folder (plus the demo's, which rules make): id -> path, prompt, error.
VIDEOS = videos_of_config(config, demo_inputs.video_names() if DEMO else ())
# Prompt embeddings are a cache of files named by hash (prompt, text encoder): only prompts
# without a file yet are encoded, so a new prompt never makes other videos' samples stale.
NEW_PROMPT_KEYS = sorted(k for k in prompts_of(VIDEOS) if not os.path.exists(f"{TEXT_DIR}/{k}.pth"))


wildcard_constraints:
    vid=r"[A-Za-z0-9_][A-Za-z0-9_-]*",
    role=r"tokenizer|text_encoder|diffusion_model",


def model_manifest(role):
    """JSON written on the submitting host by download_model: where the model's files are."""
    return f"{RESULTS}/models/{role}.json"


def model_source(role):
    if role == "diffusion_model":
        return config["train"]["model"]
    return config[role]


def local_model_input(wildcards):
    """A local model folder is an input of download_model (the demo makes its folders itself)."""
    source = model_source(wildcards.role)
    return [os.path.normpath(source)] if parse_source(source).local_path is not None else []


def video_input(wildcards):
    return VIDEOS[wildcards.vid].path


def instruction_input(wildcards):
    path = VIDEOS[wildcards.vid].instruction_path
    return [path] if path else []


def text_embeddings_input(wildcards):
    key = VIDEOS[wildcards.vid].prompt_key
    return [f"{TEXT_DIR}/{key}.pth"] if key else []


def all_reports():
    return [f"{REPORTS_DIR}/{vid}.json" for vid in sorted(VIDEOS)]
