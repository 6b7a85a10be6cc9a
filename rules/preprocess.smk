# Preprocessing: videos -> NeMo post-training samples.
# One job encodes every new distinct prompt with T5 (the encoder is loaded once per run); one job per
# video decodes it once, streamed, and encodes all its chunks (no job per chunk) with the tokenizer
# of the machine's encode worker (loaded once per GPU and run, or per SLURM group job: see
# cosmos_lib/encode_worker.py); `dataset` gathers the samples into the flat folder NeMo reads, and
# writes the summary.


rule encode_prompts:
    """T5 embeddings of the prompts that have none yet, the encoder loaded once for all of them."""
    input:
        manifest=model_manifest("text_encoder"),
    output:
        [f"{TEXT_DIR}/{key}.pth" for key in NEW_PROMPT_KEYS],
    params:
        demo_videos=demo_inputs.video_names() if DEMO else [],
        device=config["encode"]["device"],
        batch_size=config["encode"]["text_batch_size"],
    log:
        f"{LOGS}/encode_prompts.log",
    resources:
        gpu=GPUS_PER_ENCODE_JOB,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../scripts/encode_prompts.py"


rule encode_video:
    input:
        video=video_input,
        instruction=instruction_input,
        text=text_embeddings_input,
        tokenizer=model_manifest("tokenizer"),
    output:
        samples=directory(f"{SAMPLES_DIR}/{{vid}}"),
        report=f"{REPORTS_DIR}/{{vid}}.json",
    params:
        prompt_key=lambda wildcards: VIDEOS[wildcards.vid].prompt_key,
        prompt_error=lambda wildcards: VIDEOS[wildcards.vid].error,
        num_chunks=config["num_chunks"],
        chunk_strategy=config["chunk_strategy"],
        seed=config["seed"],
        num_frames=config["num_frames"],
        height=config["height"],
        width=config["width"],
        resize_mode=config["resize_mode"],
        conditioning_frames=config["conditioning_frames"],
        fail_on_bad_video=config["fail_on_bad_video"],
        worker_log_dir=f"{LOGS}/encode_workers",
    # params are what the samples depend on: a changed one re-encodes the video. How the encoding
    # runs (config `encode`: device, batch size, decode threads, compile, the worker) the script
    # reads from the config, so tuning it on a cluster redoes nothing.
    log:
        f"{LOGS}/encode_video/{{vid}}.log",
    group:
        "encode"
    threads: 2
    resources:
        gpu=GPUS_PER_ENCODE_JOB,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../scripts/encode_video.py"


rule dataset:
    """Link every finished sample into the flat folder NeMo reads (only what changed), drop what
    no video has any more, and write the per-video summary."""
    input:
        reports=all_reports(),
    output:
        manifest=DATASET_MANIFEST,
        summary=SUMMARY,
    params:
        samples_dir=SAMPLES_DIR,
        dataset_dir=DATASET_DIR,
    log:
        f"{LOGS}/dataset.log",
    conda:
        "../envs/preprocess.yaml"
    script:
        "../scripts/dataset.py"
