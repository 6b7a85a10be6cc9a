"""Snakemake script of rule encode_video: one video -> its samples and report.

With encode.worker_idle_seconds > 0 (the default) the machine's encode worker does the work with
its already loaded tokenizer, and this job imports no torch (it starts in a fraction of a second).
"""

from cosmos_lib.logs import setup_job_logging

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
p = sm.params
run = sm.config["encode"]  # how to encode (not a param: changing it re-encodes nothing)
job = {
    "video": sm.input.video, "video_id": sm.wildcards.vid, "out_dir": sm.output.samples, "report": sm.output.report,
    "t5_embeddings": sm.input.text[0] if sm.input.text else "", "prompt_error": p.prompt_error, "fail_on_bad_video": p.fail_on_bad_video,
    "settings": {
        "num_frames": p.num_frames, "height": p.height, "width": p.width, "conditioning_frames": p.conditioning_frames,
        "num_chunks": p.num_chunks, "seed": p.seed, "chunk_strategy": p.chunk_strategy, "resize_mode": p.resize_mode,
        "batch_size": run["batch_size"], "decode_threads": run["decode_threads"],
    },
}
if run["worker_idle_seconds"] > 0:
    from cosmos_lib.encode_worker import WorkerSpec, encode_in_worker

    spec = WorkerSpec(
        tokenizer_manifest=sm.input.tokenizer, device=run["device"], compile=run["compile"], threads=sm.threads,
        idle_seconds=run["worker_idle_seconds"], log_dir=p.worker_log_dir,
    )
    encode_in_worker(spec, job, log_path=sm.log[0])
else:  # a tokenizer of this job's own
    from cosmos_lib.hub import read_manifest
    from cosmos_lib.preprocess import encode_job, pick_device
    from cosmos_lib.tokenizer import VideoTokenizer

    tokenizer = VideoTokenizer.load(read_manifest(sm.input.tokenizer), device=pick_device(run["device"]), compile=run["compile"])
    encode_job(job, tokenizer)
