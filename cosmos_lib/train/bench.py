"""Throughput and memory of the real training step on one GPU: ``python -m cosmos_lib.train.bench``.

Builds a Cosmos-1.0 architecture (optionally with fewer layers, to fit one GPU), shards it with
the trainer's own ``parallelize`` (FSDP2, bf16 compute, fp32 master weights), and times
forward + backward + AdamW steps of the trainer's objective on random latents of a given shape.
Prints one JSON line: step time, samples/s, model TFLOP/s, MFU, peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .metrics import peak_flops, train_flops_per_sample
from .model import build_model, transformer_config
from .objective import EDMConfig, denoise_loss, make_noised_batch
from .parallel import init_distributed, parallelize


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="7B")
    p.add_argument("--task", default="text2world")
    p.add_argument("--layers", type=int, default=None, help="override num_layers (fit one GPU)")
    p.add_argument("--latent", default="16,16,88,160", help="C,T,H,W (121x704x1280 -> 16,16,88,160)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-ac", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)

    info = init_distributed("cuda")
    cfg = transformer_config(args.size, args.task)
    if args.layers:
        cfg["num_layers"] = args.layers
    shape = tuple(int(x) for x in args.latent.split(","))
    model = build_model(cfg, info.device)
    parallelize(model, param_dtype=torch.bfloat16, activation_checkpointing=not args.no_ac, compile_blocks=args.compile)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.1, foreach=True)
    ecfg = EDMConfig()
    latent = torch.randn(args.batch, *shape, device=info.device, dtype=torch.bfloat16)
    text = torch.randn(args.batch, 512, 1024, device=info.device)
    times = []
    for step in range(args.steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = make_noised_batch(latent, text, list(range(step * args.batch, (step + 1) * args.batch)), cfg=ecfg,
                                  seed=0, video2world=args.task == "video2world")
        loss = denoise_loss(model, batch, fps=24.0, cfg=ecfg).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:  # warm-up (and compilation) excluded
            times.append(time.perf_counter() - t0)
    dt = sum(times) / len(times)
    flops = train_flops_per_sample(cfg, shape) * args.batch
    peak = peak_flops(info.device)
    print(json.dumps({
        "size": args.size, "layers": cfg["num_layers"], "latent": shape, "batch": args.batch,
        "activation_checkpointing": not args.no_ac, "compile": args.compile,
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "step_s": dt, "samples_per_s": args.batch / dt, "model_tflops": flops / dt / 1e12,
        "mfu": flops / dt / peak if peak else None, "loss": loss.item(),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "device": torch.cuda.get_device_name(),
    }), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
