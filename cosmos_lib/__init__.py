"""cosmos_lib: the library behind the Cosmos-1.0 post-training workflow.

Modules:
- sample_format: the cached sample format NeMo post-training reads (the one place it is stated)
- naming: video file names -> stable, unique sample prefixes
- chunks: reproducible choice of chunk starts per video
- video: streamed PyAV decoding
- tokenizer / text_encoder / hub: the models of preprocessing and how their weights are found
- preprocess: the per-video encode job and the prompt encode job
- train: the trainer (model configs, objective, data, parallelisation, loop, checkpoints)
"""

__version__ = "0.1.0"
