import os
import re
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow and its jobs import cosmos_lib from this checkout, also in per-rule conda envs.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)

from cosmos_lib import demo_inputs, sample_format
from cosmos_lib.hub import parse_source
from cosmos_lib.inputs import discover_videos


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
DATASET_MANIFEST = f"{RESULTS}/dataset_manifest.json"
SUMMARY = f"{RESULTS}/summary.tsv"
LOGS = "logs"

DEMO = config["demo"]
VIDEOS_DIR = config["videos"]
INSTRUCTIONS_DIR = config["instructions"]

# Every video of the folder (plus the demo's, which rules make): id -> path, prompt, error.
VIDEOS = discover_videos(
    VIDEOS_DIR,
    prompt=config["prompt"],
    instructions=INSTRUCTIONS_DIR or None,
    expected=demo_inputs.video_names() if DEMO else (),
)
PROMPTS = {v.prompt_key: v.prompt for v in VIDEOS.values() if v.prompt is not None}


wildcard_constraints:
    vid=r"[A-Za-z0-9_][A-Za-z0-9_-]*",
    role=r"tokenizer|text_encoder|diffusion_model",


def model_manifest(role):
    """The JSON a local download rule writes: where a model's files are on this host's disk."""
    return f"{RESULTS}/models/{role}.json"


def model_source(role):
    if role == "diffusion_model":
        return config["train"]["model"]
    return config[role]


def local_model_input(wildcards):
    """A local model folder is an input of its download rule (the demo's are made by rules)."""
    source = model_source(wildcards.role)
    return [os.path.normpath(source)] if parse_source(source).local_path is not None else []


def video_input(wildcards):
    return VIDEOS[wildcards.vid].path


def instruction_input(wildcards):
    path = VIDEOS[wildcards.vid].instruction_path
    return [path] if path else []


def text_embeddings_input(wildcards):
    # ancient: re-encoding other videos' prompts must not make this video's samples stale
    return ancient(TEXT_DIR) if VIDEOS[wildcards.vid].prompt is not None else []


def all_reports():
    return [f"{REPORTS_DIR}/{vid}.json" for vid in sorted(VIDEOS)]
