"""Throughput and memory of the real training step on one GPU: ``python -m cosmos_lib.train.bench``.

Builds a Cosmos-1.0 architecture (optionally with fewer transformer blocks, to fit one GPU),
shards it with the trainer's own ``parallelize`` (FSDP2, bf16 compute, fp32 master weights,
activation checkpointing and ``torch.compile`` as configured) and times forward + backward +
AdamW steps of the trainer's objective (``objective.make_noised_batch`` / ``denoise_loss``) on
random latents of a given shape. The CLI prints one JSON line; ``benchmarks/train.py`` drives
:func:`run_variant` for its table, variants and profile.

MFU counts model FLOPs: ``torch.utils.flop_counter`` on the forward (as ``metrics.py``), x3 for
forward + backward; recomputation under activation checkpointing is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch

from .metrics import PEAK_BF16_FLOPS, forward_flop_counter, train_flops_per_sample
from .model import build_model, transformer_config
from .objective import EDMConfig, denoise_loss, make_noised_batch
from .parallel import compute_dtype, init_distributed, parallelize

#: dense bf16 peaks of parts whose name fragment is shared with a faster part (data sheets);
#: checked before ``metrics.PEAK_BF16_FLOPS`` (where "H100" means the SXM part, 989 TFLOP/s)
PEAK_BF16_OVERRIDES = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H800 PCIe", 756e12), ("A100-PCIE", 312e12))


def peak_bf16_flops(device_name: str) -> tuple[float | None, str]:
    """(dense bf16 peak FLOP/s, which table entry matched) for a CUDA device name."""
    for key, value in PEAK_BF16_OVERRIDES:
        if key.lower() in device_name.lower():
            return value, key
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key], key
    return None, "unknown device"


# --- model FLOPs ---------------------------------------------------------------------------------
#: on the meta device SDPA decomposes to its math path: the batched matmuls (bmm) are the attention;
#: the linear layers count as mm / addmm
_ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention", "bmm")


def forward_flops(model_config: dict, latent_shape: tuple[int, ...], text_len: int = 512) -> dict:
    """Forward FLOPs of one sample on a meta-device model, split into attention and matmul (linear).

    Counted the same way as ``metrics.train_flops_per_sample`` (which the trainer logs MFU with).
    """
    model, counter = forward_flop_counter(model_config, latent_shape, text_len)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    attention = sum(v for k, v in by_op.items() if any(a in k for a in _ATTENTION_OPS))
    total = int(counter.get_total_flops())
    return {"total": total, "attention": attention, "matmul": total - attention, "by_op": by_op,
            "params": sum(p.numel() for p in model.parameters()),
            "params_per_block": sum(p.numel() for p in model.transformer_blocks[0].parameters())}


# --- one benchmark variant -----------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    blocks: int
    activation_checkpointing: bool = True
    compile: bool = False
    sdpa: str = "default"  # default | cudnn | flash | efficient
    warmup: int = 2
    steps: int = 3
    profile: bool = False


def _sdpa_context(kind: str):
    if kind == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}[kind]
    return sdpa_kernel([backend])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(size: str, task: str, latent_shape: tuple[int, ...], variant: Variant, device: torch.device,
                *, batch: int = 1, flops_per_sample: float | None = None, peak: float | None = None) -> dict:
    """Build, shard and train ``variant.blocks`` blocks of the ``size`` architecture; time the steps.

    The step is the trainer's: noised batch, EDM loss, backward, global-norm clipping, AdamW
    (foreach; lr 1e-6, betas (0.9, 0.99), weight decay 0.1 as the config defaults), zero_grad.
    Returns step times, peak memory and, when ``variant.profile``, a ``torch.profiler`` summary
    of one more step (``profile`` and ``profile_text``).
    """
    cfg = dict(transformer_config(size, task), num_layers=variant.blocks)
    if flops_per_sample is None:
        flops_per_sample = train_flops_per_sample(cfg, latent_shape)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t_build = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(cfg, device)
    parallelize(model, param_dtype=compute_dtype("auto", device),
                activation_checkpointing=variant.activation_checkpointing, compile_blocks=variant.compile)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                            foreach=True)
    ecfg = EDMConfig()
    video2world = task == "video2world"
    g = torch.Generator(device=device).manual_seed(0)
    latent = torch.randn(batch, *latent_shape, device=device, generator=g).to(torch.bfloat16)
    text = torch.randn(batch, 512, 1024, device=device, generator=g)
    build_s = time.perf_counter() - t_build

    def step(i: int) -> float:
        noised = make_noised_batch(latent, text, list(range(i * batch, (i + 1) * batch)), cfg=ecfg, seed=0,
                                   video2world=video2world)
        with _sdpa_context(variant.sdpa):
            loss = denoise_loss(model, noised, fps=24.0, cfg=ecfg).mean()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    times, warm_times, loss = [], [], None
    for i in range(variant.warmup + variant.steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = step(i)
        _sync(device)
        (warm_times if i < variant.warmup else times).append(time.perf_counter() - t0)
    loss_value = float(loss)
    dt = sorted(times)[len(times) // 2]  # median
    out = {
        **asdict(variant), "layers": cfg["num_layers"], "batch": batch,
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "build_s": round(build_s, 2), "warmup_step_s": [round(t, 3) for t in warm_times],
        "step_s_all": [round(t, 4) for t in times], "step_s": dt, "step_s_mean": sum(times) / len(times),
        "samples_per_s": batch / dt, "model_flops_per_step": flops_per_sample * batch,
        "model_tflops": flops_per_sample * batch / dt / 1e12,
        "mfu": flops_per_sample * batch / dt / peak if peak else None,
        "loss": loss_value, "loss_finite": math.isfinite(loss_value),
    }
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    if variant.profile:
        try:
            out.update(_profile_step(step, variant.warmup + variant.steps, device))
        except Exception as exc:  # a profile that fails must not lose the timings
            out["profile_error"] = f"{type(exc).__name__}: {exc}"
    del model, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# --- profile summary -----------------------------------------------------------------------------
def kernel_category(name: str) -> str:
    """Coarse class of a GPU kernel by name: attention, gemm, elementwise_norm, optimizer, comm, copy."""
    n = name.lower()
    if n.startswith("triton_"):  # inductor-fused pointwise / reduction kernels (norms, RoPE, gates, casts)
        return "elementwise_norm"
    if any(k in n for k in ("flash", "fmha", "sdpa", "attention", "attn")):
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "splitk", "sm90_")):
        return "gemm"
    if "nccl" in n:
        return "comm"
    if "multi_tensor_apply" in n or "foreach" in n:
        return "optimizer"
    if "memcpy" in n or "memset" in n:
        return "copy"
    return "elementwise_norm"


def _event_us(evt) -> float:
    try:
        return float(evt.time_range.elapsed_us())
    except Exception:
        return float(getattr(evt, "device_time", 0.0) or getattr(evt, "cuda_time", 0.0) or 0.0)


def _profile_step(step, index: int, device: torch.device) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        step(index)
        _sync(device)
    wall = time.perf_counter() - t0
    kernels: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for evt in prof.events():
        if getattr(evt, "device_type", None) == DeviceType.CUDA and not (
                getattr(evt, "is_user_annotation", False) or evt.name.startswith(("Optimizer.", "ProfilerStep"))):
            k = kernels[evt.name]
            k[0] += 1
            k[1] += _event_us(evt)
    busy_us = sum(v[1] for v in kernels.values())
    by_cat: dict[str, float] = defaultdict(float)
    for name, (_, us) in kernels.items():
        by_cat[kernel_category(name)] += us
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:30]
    summary = {
        "profiled_step_wall_s": wall,
        "kernel_time_s": busy_us / 1e6,
        "kernel_time_over_wall": busy_us / 1e6 / wall if wall else None,
        "share_of_kernel_time": {c: us / busy_us for c, us in sorted(by_cat.items(), key=lambda kv: -kv[1])}
        if busy_us else {},
        "seconds_by_category": {c: us / 1e6 for c, us in by_cat.items()},
        "top_kernels": [{"name": n[:160], "category": kernel_category(n), "calls": c, "s": us / 1e6,
                         "share": us / busy_us if busy_us else None} for n, (c, us) in top],
    }
    lines = [f"one profiled training step: wall {wall:.3f} s, GPU kernel time {busy_us / 1e6:.3f} s", "",
             "share of GPU kernel time by category:"]
    for c, s in summary["share_of_kernel_time"].items():
        lines.append(f"  {c:18s} {s * 100:6.1f} %  {by_cat[c] / 1e6:8.3f} s")
    lines += ["", "top kernels by GPU time:", f"  {'s':>8} {'share':>6} {'calls':>6}  {'category':16s} name"]
    for k in summary["top_kernels"]:
        lines.append(f"  {k['s']:8.3f} {(k['share'] or 0) * 100:5.1f}% {k['calls']:6d}  {k['category']:16s} {k['name']}")
    table = None
    for sort_by in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
        try:
            table = prof.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=90)
            break
        except Exception:
            continue
    if table:
        lines += ["", "operators (torch.profiler key_averages):", table]
    return {"profile": summary, "profile_text": "\n".join(lines)}


# --- CLI -----------------------------------------------------------------------------------------
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
    p.add_argument("--sdpa", default="default", choices=["default", "cudnn", "flash", "efficient"])
    args = p.parse_args(argv)

    info = init_distributed("cuda")
    shape = tuple(int(x) for x in args.latent.split(","))
    layers = args.layers or transformer_config(args.size, args.task)["num_layers"]
    peak, _ = peak_bf16_flops(torch.cuda.get_device_name(info.device))
    variant = Variant("cli", layers, activation_checkpointing=not args.no_ac, compile=args.compile, sdpa=args.sdpa,
                      warmup=2, steps=args.steps)
    result = run_variant(args.size, args.task, shape, variant, info.device, batch=args.batch, peak=peak)
    print(json.dumps({"size": args.size, "latent": shape, **result, "device": torch.cuda.get_device_name()}),
          flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
