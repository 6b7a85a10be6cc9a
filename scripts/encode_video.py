"""Snakemake script of rule encode_video: one video -> its samples and report."""

import logging
import os

from cosmos_lib.hub import read_manifest
from cosmos_lib.logs import setup_job_logging
from cosmos_lib.preprocess import BadVideo, EncodeSettings, encode_video, pick_device, write_report
from cosmos_lib.sample_format import load_tensor
from cosmos_lib.tokenizer import VideoTokenizer

sm = snakemake  # noqa: F821 - provided by Snakemake
setup_job_logging(sm.log[0])
p = sm.params
os.makedirs(sm.output.samples, exist_ok=True)
report = {"video": os.path.basename(sm.input.video), "video_id": sm.wildcards.vid, "status": "ok", "reason": "", "samples": []}
try:
    if p.prompt_error:
        raise BadVideo(p.prompt_error)
    settings = EncodeSettings(
        num_frames=p.num_frames, height=p.height, width=p.width, conditioning_frames=p.conditioning_frames,
        num_chunks=p.num_chunks, seed=p.seed, chunk_strategy=p.chunk_strategy, resize_mode=p.resize_mode,
        batch_size=p.batch_size, decode_threads=p.decode_threads,
    )
    tokenizer = VideoTokenizer.load(read_manifest(sm.input.tokenizer), device=pick_device(p.device), compile=p.compile)
    report = encode_video(
        sm.input.video, sm.wildcards.vid, out_dir=sm.output.samples, tokenizer=tokenizer,
        t5_embeddings=load_tensor(sm.input.text[0]), settings=settings,
    )
except BadVideo as exc:
    if p.fail_on_bad_video:
        raise
    logging.getLogger("encode_video").warning("skipped: %s", exc)
    report.update(status="failed", reason=str(exc), samples=[])
write_report(sm.output.report, report)
