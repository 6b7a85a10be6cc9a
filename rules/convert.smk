# Checkpoint conversion between NeMo's Cosmos-1.0 DiT layout and diffusers' (cosmos_lib.nemo_checkpoint).
#   snakemake --cores 1 convert_nemo_to_diffusers --config 'convert={"nemo_checkpoint": "ckpts/7B-Text2World/nemo"}'
#   snakemake --cores 1 convert_diffusers_to_nemo --config 'convert={"diffusers_model": "models/my_transformer"}'
# Config keys (under convert:, all optional): nemo_checkpoint, diffusers_model, variant, dtype,
# backend, offdiag; see docs/nemo_interop.md.

CONVERT = config["convert"]
CONVERTED_DIR = f"{RESULTS}/converted"
# An unset source shows up as this missing input, which names the key to set.
CONVERT_UNSET = "<set config convert.{}>"


rule convert_nemo_to_diffusers:
    """A NeMo checkpoint (torch_dist or zarr, e.g. the nemo/ folder of nvidia/Cosmos-1.0-Diffusion-*)
    -> a diffusers transformer folder."""
    input:
        lambda wildcards: CONVERT.get("nemo_checkpoint") or CONVERT_UNSET.format("nemo_checkpoint"),
    output:
        directory(f"{CONVERTED_DIR}/diffusers_transformer"),
    params:
        direction="nemo-to-diffusers",
        variant=CONVERT.get("variant", ""),
        dtype=CONVERT.get("dtype", "keep"),
        offdiag=CONVERT.get("offdiag", "error"),
    log:
        f"{LOGS}/convert/nemo_to_diffusers.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/convert_checkpoint.py"


rule convert_diffusers_to_nemo:
    """A diffusers transformer (or a diffusers-keyed training checkpoint) -> a NeMo checkpoint
    (weights/ with NeMo's key names, loadable by megatron-core's dist_checkpointing.load)."""
    input:
        lambda wildcards: CONVERT.get("diffusers_model") or CONVERT_UNSET.format("diffusers_model"),
    output:
        directory(f"{CONVERTED_DIR}/nemo"),
    params:
        direction="diffusers-to-nemo",
        dtype=CONVERT.get("dtype", "keep"),
        backend=CONVERT.get("backend", "torch_dist"),
    log:
        f"{LOGS}/convert/diffusers_to_nemo.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/convert_checkpoint.py"
