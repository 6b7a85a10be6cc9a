"""The training loop (torchtitan's ``train.py`` role): data check, model, optimizer, resume, steps.

Run under ``torchrun`` (one process per GPU, nccl) or as a plain process / gloo group on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cosmos_lib.sample_format import SampleError, atomic_write_text

from . import checkpoint
from .config import TrainConfig
from .data import StreamSampler, build_loader, check_dataset
from .metrics import MetricLogger, memory_stats, peak_flops, train_flops_per_sample
from .model import build_model, pretrained_state_dict, random_state_dict, resolve_config, weights_source
from .objective import denoise_loss, make_noised_batch
from .parallel import compute_dtype, init_distributed, parallelize

log = logging.getLogger("cosmos_lib.train")
SUMMARY = "summary.json"


def _setup_logging(rank: int) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False


def _checked_dataset(dataset, model_config, cfg: TrainConfig):
    """Rank 0 checks the sample folder; every rank gets its prefixes and latent shape (or the error)."""
    payload: list = [None, None, None]
    if dist.get_rank() == 0:
        try:
            prefixes, shape = check_dataset(dataset, model_config, video2world=cfg.task == "video2world",
                                            min_condition_frames=cfg.objective.condition_frames_min)
            payload = [None, prefixes, shape]
        except SampleError as exc:
            payload = [str(exc), None, None]
    dist.broadcast_object_list(payload, src=0)
    if payload[0] is not None:
        raise SampleError(payload[0])
    return payload[1], tuple(payload[2])


def _lr_lambda(warmup: int):
    return lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0


def train(cfg: TrainConfig, *, dataset: str | os.PathLike, run_dir: str | os.PathLike,
          model_dir: str | os.PathLike | None = None, stop_after: int | None = None) -> dict:
    """Train (resuming from the latest complete checkpoint in ``run_dir``); return the summary.

    ``stop_after``: leave right after that step without any cleanup, as a kill would (tests).
    """
    info = init_distributed(cfg.device)
    _setup_logging(info.rank)
    run_dir = Path(run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    accumulation = cfg.accumulation(info.world_size)
    source = weights_source(cfg.model, model_dir, cfg.init_from)
    model_config = resolve_config(cfg.model, cfg.task, model_dir, cfg.init_from)
    checkpoint.check_world_size(model_config, info.world_size)
    prefixes, latent_shape = _checked_dataset(dataset, model_config, cfg)
    log.info("dataset %s: %d samples, latent %s; world %d, micro %d, accumulation %d, global batch %d",
             dataset, len(prefixes), latent_shape, info.world_size, cfg.micro_batch_size, accumulation,
             cfg.global_batch_size)

    # model: meta -> shard -> materialise -> rank 0's full weights broadcast to the shards
    torch.manual_seed(cfg.seed)
    model = build_model(model_config, "meta")
    param_dtype = compute_dtype(cfg.precision, info.device)
    parallelize(model, param_dtype=param_dtype, activation_checkpointing=cfg.activation_checkpointing,
                compile_blocks=cfg.compile)
    model.to_empty(device=info.device)
    full = None
    if info.is_main:
        full = random_state_dict(model_config, cfg.seed) if source is None else pretrained_state_dict(source)
    checkpoint.broadcast_full_state(model, full)
    del full
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s (%s): %.4gB parameters, compute %s, weights from %s", cfg.model, cfg.task, n_params / 1e9,
             param_dtype, source or f"random init (seed {cfg.seed})")

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps))
    start = 0
    fingerprint = hashlib.sha256("\n".join(prefixes).encode()).hexdigest()
    dataset_changed = False
    latest = checkpoint.latest_complete(run_dir)
    if latest is not None:
        state = checkpoint.load(latest, model=model, optimizer=optimizer, scheduler=scheduler)
        start = state["step"]
        log.info("resumed from %s (step %d)", latest, start)
        before = state.get("sampler", {})
        if before.get("dataset_sha256") not in (None, fingerprint):
            dataset_changed = True
            log.warning("the dataset changed since step %d (%s -> %d samples): training continues from that "
                        "checkpoint over the new sample set, up to max_steps=%d", start,
                        before.get("num_samples"), len(prefixes), cfg.max_steps)
        if start >= cfg.max_steps:
            log.info("the run is already at max_steps=%d: nothing to train (raise train.max_steps to continue, "
                     "or choose a new train.run_name to start over)", cfg.max_steps)

    sampler = StreamSampler(len(prefixes), global_batch=cfg.global_batch_size, micro_batch=cfg.micro_batch_size,
                            rank=info.rank, world=info.world_size, seed=cfg.seed, start_step=start)
    loader = build_loader(dataset, prefixes, sampler, num_workers=cfg.num_workers,
                          pin_memory=info.device.type == "cuda")
    flops = train_flops_per_sample(model_config, latent_shape) if info.is_main else 0.0
    peak = peak_flops(info.device)
    metrics = MetricLogger(run_dir, enabled=info.is_main, wandb_cfg=cfg.wandb, train_config=cfg.to_dict())
    video2world = cfg.task == "video2world"
    batches = iter(loader)
    step, loss = start, float("nan")
    t_last = time.perf_counter()
    try:
        for step in range(start + 1, cfg.max_steps + 1):
            lr = scheduler.get_last_lr()[0]
            loss_sum = torch.zeros((), device=info.device)
            for micro in range(accumulation):
                batch = next(batches)
                video = batch["video"].to(info.device, non_blocking=True)
                text = batch["t5"].to(info.device, non_blocking=True).float()
                noised = make_noised_batch(video, text, batch["position"].tolist(), cfg=cfg.objective,
                                           seed=cfg.seed, video2world=video2world)
                # Cosmos' RoPE takes one fps per batch (the first sample's, as cosmos1 general_dit does)
                model.set_requires_gradient_sync(micro == accumulation - 1)
                per_sample = denoise_loss(model, noised, fps=float(batch["fps"][0]), cfg=cfg.objective)
                # FSDP averages gradients over ranks: sum / (micro x accumulation) gives the global mean
                (per_sample.sum() / (cfg.micro_batch_size * accumulation)).backward()
                loss_sum += per_sample.detach().sum()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            dist.all_reduce(loss_sum)
            loss = loss_sum.item() / cfg.global_batch_size
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                dt = (now - t_last) / (cfg.log_every if step % cfg.log_every == 0 else 1)
                values = {"loss": loss, "grad_norm": float(grad_norm), "lr": lr,
                          "samples_per_s": cfg.global_batch_size / dt, "step_time_s": dt}
                if peak:
                    values["mfu"] = flops * cfg.global_batch_size / dt / (peak * info.world_size)
                values.update(memory_stats(info.device))
                metrics.log(step, values)
                t_last = time.perf_counter()
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                path = checkpoint.save(run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                                       sampler_state={**sampler.state_dict(step), "dataset_sha256": fingerprint}, model_config=model_config,
                                       train_config=cfg.to_dict())
                log.info("saved %s", path)
                t_last = time.perf_counter()
            if stop_after is not None and step >= stop_after:
                sys.stdout.flush()
                os._exit(3)
    finally:
        metrics.close()
    final = checkpoint.latest_complete(run_dir)
    summary = {"run_dir": str(run_dir), "step": step, "final_loss": loss, "checkpoint": str(final) if final else None,
               "task": cfg.task, "model": cfg.model, "samples": len(prefixes), "latent_shape": list(latent_shape),
               "world_size": info.world_size, "dataset_sha256": fingerprint, "dataset_changed_on_resume": dataset_changed}
    if info.is_main:
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=1) + "\n")
    dist.barrier()
    return summary
