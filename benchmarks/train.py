"""Training-step speed and memory of the Cosmos-1.0 7B DiT at 121x704x1280 on ONE GPU.

    python benchmarks/train.py                       # real 7B config (random weights), one GPU
    python benchmarks/train.py --tiny                # a smoke run on the CPU with the tiny config

The real config of Cosmos-1.0-Diffusion-7B (28 blocks, 4096 wide, 32 heads x 128, FFN 16384,
AdaLN-LoRA 256, patch (1,2,2)) at the latent of one 121x704x1280 sample (16x16x88x160 ->
56,320 tokens), with as many transformer blocks as fit one GPU together with their fp32 master
weights, gradients and AdamW state (the full model does not). Everything goes through the
trainer's code: ``cosmos_lib.train.parallel.parallelize`` (per-block activation checkpointing,
per-block ``torch.compile``, FSDP2 ``fully_shard`` per block and at the root, world size 1, bf16
compute / fp32 reduce), the trainer's EDM objective, global-norm clipping and foreach AdamW;
the variants run through ``cosmos_lib.train.bench.run_variant``.

Measured, in order of importance (the JSON is rewritten after each, so a run cut short keeps what
it has): (1) activation checkpointing + compile at the largest block count, with a
``torch.profiler`` summary of one step; (2) the same without compile; (3) activation checkpointing off
(fewer blocks: without it the activations of one block are many GB) beside (4) checkpointing on
at that block count; (5) (1) with cuDNN's attention instead of SDPA's default (compiled, and
profiled, if time is left for a second compilation, else eager beside (2)). From the peaks of (2)
and (4) follows the memory per block with checkpointing, which gives the arithmetic for the full
7B and 14B models on 8 GPUs.

MFU counts MODEL FLOPs: ``torch.utils.flop_counter`` on the forward of one sample, x3 for
forward + backward, recomputation not counted; peak = dense bf16 of the GPU by name (H100 SXM
989 TFLOP/s, H100 PCIe 756, H100 NVL 835: ``cosmos_lib.train.bench.peak_bf16_flops``).
Writes ``benchmarks/results/train.json`` and ``benchmarks/results/train_profile.txt``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MFU_GOAL = 0.5
GIB = 2**30
#: NCCL buffers and reduce-scatter staging that a world of one does not allocate (allowance, not measured)
COMM_ALLOWANCE_GIB = 2.0


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=None)
def _param_counts(size: str, task: str) -> dict:
    """Parameters of the whole model and of one block, counted on the meta device."""
    from cosmos_lib.train.model import build_model, transformer_config

    cfg = transformer_config(size, task)
    model = build_model(cfg, "meta")
    per_block = sum(p.numel() for p in model.transformer_blocks[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return {"params": total, "params_per_block": per_block, "layers": cfg["num_layers"],
            "non_block_params": total - per_block * cfg["num_layers"], "hidden": hidden}


#: an earlier measurement of the 14B width with this benchmark's step (docs/training.md: one H100,
#: torch 2.11, eager, activation checkpointing on): peaks at 2 and 3 blocks
PRIOR_14B = {"source": "docs/training.md (python -m cosmos_lib.train.bench, H100, torch 2.11, eager, AC on)",
             "blocks": [2, 3], "peak_gpu_gib": [39.0, 45.4]}


def memory_arithmetic(variants: list[dict], tokens: int, task: str, gpu_total_gib: float | None,
                      world: int = 8) -> dict | None:
    """Full 7B and 14B per GPU under FSDP over ``world`` GPUs, from this run's measured peaks.

    Measured here (7B width, activation checkpointing on, eager): the peak at two block counts.
    Per GPU on ``world`` GPUs = 16 B x params / world (fp32 master weights, fp32 grads, AdamW m
    and v, sharded) + layers x kept activations per block + working set + 2 GiB for
    communication buffers that a world of one does not allocate. Kept activations: what a
    checkpointed block stores, its input (tokens x hidden x 2 B in bf16). At world size 1 the
    peak grows per block by exactly the state of a block (measured): the fp32 gradients
    (4 B/param, 0.95 GiB per 7B block) are allocated in backward as the kept inputs (0.43 GiB)
    are freed, so the peak falls at the end of backward. On 8 GPUs the gradients are sharded 8x
    and the peak moves to the start of backward, with every kept input live: counted in full.
    Working set: the peak at the smaller block count minus its state (one block's recomputed
    activations and their gradients, gathered bf16 parameters, embeddings, loss). 14B (hidden
    5120): kept inputs x1.25; working set the larger of x1.25 (hidden) and the working set of an
    earlier 14B-width measurement (PRIOR_14B); x1.55 (parameters per block) as an upper bound.
    """
    eager = [v for v in variants if v.get("activation_checkpointing") and not v.get("compile")
             and v.get("sdpa") == "default" and "peak_gpu_gib" in v and "error" not in v]
    counts = sorted({v["blocks"]: v for v in eager}.items())
    if len(counts) < 2:
        return None
    (b_lo, v_lo), (b_hi, v_hi) = counts[0], counts[-1]
    p7 = _param_counts("7B", task)
    p14 = _param_counts("14B", task)
    state_block = 16 * p7["params_per_block"] / GIB
    slope = (v_hi["peak_gpu_gib"] - v_lo["peak_gpu_gib"]) / (b_hi - b_lo)
    kept_measured = slope - state_block
    kept = tokens * p7["hidden"] * 2 / GIB
    state_lo = 16 * (b_lo * p7["params_per_block"] + p7["non_block_params"]) / GIB
    working = v_lo["peak_gpu_gib"] - state_lo - b_lo * max(kept_measured, 0.0)
    compiled = [v for v in variants if v.get("compile") and v.get("activation_checkpointing")
                and v.get("sdpa") == "default" and "peak_gpu_gib" in v and "error" not in v]
    working_compiled = None
    if compiled:
        c = compiled[0]
        working_compiled = (c["peak_gpu_gib"] - 16 * (c["blocks"] * p7["params_per_block"] + p7["non_block_params"])
                            / GIB - c["blocks"] * max(kept_measured, 0.0))
    prior_w14 = PRIOR_14B["peak_gpu_gib"][0] - 16 * (PRIOR_14B["blocks"][0] * p14["params_per_block"]
                                                    + p14["non_block_params"]) / GIB
    out = {
        "method": " ".join(memory_arithmetic.__doc__.split("\n\n")[1].split()),
        "comm_allowance_gib": COMM_ALLOWANCE_GIB,
        "measured": {"blocks": [b_lo, b_hi], "peak_gpu_gib": [v_lo["peak_gpu_gib"], v_hi["peak_gpu_gib"]],
                     "peak_growth_per_block_gib": slope, "state_per_block_gib": state_block,
                     "peak_growth_minus_state_gib": kept_measured,
                     "kept_input_per_block_gib": kept,
                     "working_set_gib_eager": working, "working_set_gib_compiled": working_compiled},
        "prior_14B_width": {**PRIOR_14B, "working_set_gib": prior_w14},
        "gpu_total_gib": gpu_total_gib, "world_size": world, "models": {},
    }
    for name, p, scale_act, scale_param in (("7B", p7, 1.0, 1.0),
                                             ("14B", p14, p14["hidden"] / p7["hidden"],
                                              p14["params_per_block"] / p7["params_per_block"])):
        state = 16 * p["params"] / world / GIB
        kept_total = p["layers"] * kept * scale_act
        w = working * scale_act if name == "7B" else max(working * scale_act, prior_w14)
        w_bound = working * max(scale_act, scale_param)
        base = state + kept_total + COMM_ALLOWANCE_GIB
        row = {"params_b": p["params"] / 1e9, "layers": p["layers"],
               "sharded_state_gib": state, "kept_activations_gib": kept_total,
               "working_set_gib": w, "total_gib": base + w, "total_gib_bound": base + max(w, w_bound)}
        if working_compiled is not None:
            row["total_gib_compiled"] = base + working_compiled * scale_act
        if gpu_total_gib:
            row["fits"] = row["total_gib"] < gpu_total_gib
            row["headroom_gib"] = gpu_total_gib - row["total_gib"]
            row["fits_bound"] = row["total_gib_bound"] < gpu_total_gib
            if "total_gib_compiled" in row:
                row["headroom_gib_compiled"] = gpu_total_gib - row["total_gib_compiled"]
        out["models"][name] = row
    return out


def _is_annotation(name: str) -> bool:
    """Profiler user annotations that sit on the GPU timeline but are no kernels (AdamW's step range)."""
    return name.startswith(("Optimizer.", "ProfilerStep", "## "))


def _kernel_seconds(profile: dict) -> dict:
    """Seconds by kernel category, without annotation ranges (runs before bench.py filtered them)."""
    sec = dict(profile.get("seconds_by_category") or {})
    for k in profile.get("top_kernels") or []:
        if _is_annotation(k["name"]) and k["category"] in sec:
            sec[k["category"]] -= k["s"]
    return sec


def goal_analysis(main: dict, flops: dict, no_ac_ratio: float | None, no_ac_gib: float | None,
                  memory: dict | None, compiled_vs_eager: dict, cudnn: dict | None, torch_version: str) -> dict:
    """How far the main variant is from MFU 0.5, what the profile says limits it, what would close it."""
    mfu = main.get("mfu")
    if mfu is None:
        return {"goal_mfu": MFU_GOAL, "mfu": None}
    ac = main.get("activation_checkpointing")
    blocks = main["blocks"]
    executed = 4.0 / 3.0 if ac else 1.0  # recomputed forward: fwd + fwd + 2 fwd (bwd)
    out = {"goal_mfu": MFU_GOAL, "mfu": mfu, "met": mfu >= MFU_GOAL,
           "missed_by_abs": max(0.0, MFU_GOAL - mfu), "missed_by_rel": max(0.0, 1 - mfu / MFU_GOAL),
           "hardware_flops_utilisation": mfu * executed,
           "note_hfu": "with full activation checkpointing every forward runs twice: executed FLOPs = 4/3 x model "
                       "FLOPs, so MFU 0.5 needs 67% of peak on executed FLOPs" if ac else ""}
    prof = main.get("profile") or {}
    limits, options = [], []
    step = main["step_s"]
    peak = main["model_flops_per_step"] / step / mfu
    if ac:
        limits.append(f"full activation checkpointing recomputes every block's forward: 25% of the executed FLOPs "
                      f"are not model FLOPs (HFU {mfu * executed:.2f} vs MFU {mfu:.2f})")
    sec = _kernel_seconds(prof) if prof else {}
    if sec:
        busy = sum(sec.values())
        shares = {c: v / busy for c, v in sorted(sec.items(), key=lambda kv: -kv[1])}
        out["share_of_kernel_time"] = shares
        out["kernel_time_over_wall"] = busy / prof["profiled_step_wall_s"] if prof.get("profiled_step_wall_s") else None
        attn = flops["attention"]  # forward, one sample, this block count (self + cross attention)
        mm = flops["total"] - attn
        fwd_s = sum(k["s"] for k in prof.get("top_kernels", []) if k["category"] == "attention"
                    and any(t in k["name"].lower() for t in ("fprop", "fwd", "forward")))
        bwd_s = sum(k["s"] for k in prof.get("top_kernels", []) if k["category"] == "attention"
                    and any(t in k["name"].lower() for t in ("bprop", "bwd", "backward")))
        fwd_runs = 2 if ac else 1
        rates = {"gemm_tflops_model_equiv": (fwd_runs + 2) * mm / sec["gemm"] / 1e12 if sec.get("gemm") else None,
                 "attention_tflops_model_equiv": (fwd_runs + 2) * attn / sec["attention"] / 1e12
                 if sec.get("attention") else None}
        if fwd_s and bwd_s:
            rates["attention_forward_tflops"] = fwd_runs * attn / fwd_s / 1e12
            rates["attention_backward_tflops_executed"] = 2.5 * attn / bwd_s / 1e12  # flash bwd: 5 matmuls vs 2
            rates["attention_backward_tflops_model_equiv"] = 2.0 * attn / bwd_s / 1e12
        out["achieved_rates"] = rates
        out["attention_share_of_model_flops"] = attn / flops["total"]
        kernel = next((k["name"] for k in prof.get("top_kernels", []) if k["category"] == "attention"), "")
        which = "cuDNN flash attention" if "cudnn" in kernel else "SDPA"
        limits.append(f"attention is {attn / flops['total'] * 100:.0f}% of the model FLOPs at 56k tokens and "
                      f"{shares.get('attention', 0) * 100:.0f}% of GPU time ({which}, SDPA's own choice): forward "
                      f"{rates.get('attention_forward_tflops') or 0:.0f} TFLOP/s, backward "
                      f"{rates.get('attention_backward_tflops_executed') or 0:.0f} TFLOP/s executed = "
                      f"{rates.get('attention_backward_tflops_model_equiv') or 0:.0f} in model FLOPs; the backward "
                      f"alone is {sec['attention'] and bwd_s / busy * 100:.0f}% of GPU time")
        if sec.get("gemm"):
            limits.append(f"GEMMs (cuBLAS nvjet) {shares.get('gemm', 0) * 100:.0f}% of GPU time at "
                          f"{rates['gemm_tflops_model_equiv']:.0f} TFLOP/s: not the limit")
        limits.append(f"elementwise / norms / RoPE / casts (inductor-fused) {shares.get('elementwise_norm', 0) * 100:.0f}%, "
                      f"AdamW {shares.get('optimizer', 0) * 100:.1f}%, copies {shares.get('copy', 0) * 100:.1f}% "
                      f"of GPU time")
        if out["kernel_time_over_wall"] is not None:
            limits.append(f"the GPU is busy {min(out['kernel_time_over_wall'], 1) * 100:.0f}% of the step's wall "
                          f"time: not CPU- or launch-bound")
        if ac and fwd_s:
            per_block_attn_fwd = fwd_s / fwd_runs / blocks
            sac_step = step - blocks * per_block_attn_fwd
            sac_mfu = main["model_flops_per_step"] / sac_step / peak
            extra = memory and memory["measured"]["kept_input_per_block_gib"]
            fit = ""
            if memory:
                rows = memory["models"]
                fit = "; memory on 8 GPUs: " + ", ".join(
                    f"{n} {r['total_gib'] + r['layers'] * extra * (5120 / 4096 if n == '14B' else 1):.0f} GiB"
                    for n, r in rows.items()) + f" of {memory['gpu_total_gib']:.0f}"
            out["estimate_selective_ac_save_attention"] = {"step_s": sac_step, "mfu": sac_mfu,
                                                            "extra_gib_per_block": extra}
            options.append(f"selective activation checkpointing that keeps each block's SDPA output (and its "
                           f"logsumexp) instead of recomputing attention: saves {per_block_attn_fwd * 1e3:.0f} ms per "
                           f"block -> est. MFU {sac_mfu:.2f}, for {extra:.2f} GiB more per block{fit} "
                           f"(needs an op-level policy in cosmos_lib.train.parallel; 14B only for part of its blocks)")
    if no_ac_ratio:
        options.append(f"no recomputation at all: measured {no_ac_ratio:.2f}x faster at 3 blocks (eager) -> est. MFU "
                       f"{mfu * no_ac_ratio:.2f} compiled, but ~{no_ac_gib or 0:.1f} GiB of activations per block: "
                       f"does not fit the full models at 56k tokens")
        out["estimate_no_recompute_mfu"] = mfu * no_ac_ratio
    if cudnn:
        limits.append(f"forcing SDPBackend.CUDNN_ATTENTION changes nothing ({cudnn['speedup']:.2f}x): torch "
                      f"{torch_version} already runs cuDNN attention here")
    if compiled_vs_eager:
        limits.append(compiled_vs_eager["text"])
    options.append("a faster attention backward (FlashAttention-3 style kernels for Hopper) is the remaining lever: "
                   "attention backward is the single largest item of the step")
    out["limits"] = limits
    out["what_would_close_the_gap"] = options
    return out


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def print_table(variants: list[dict]) -> None:
    head = f"{'variant':28s} {'blocks':>6} {'AC':>3} {'comp':>4} {'sdpa':>7} {'step s':>7} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8}"
    print(head)
    print("-" * len(head))
    for v in variants:
        if "error" in v or "skipped" in v:
            print(f"{v['name']:28s} {v.get('blocks', '-'):>6} {'':>3} {'':>4} {'':>7} "
                  f"{(v.get('error') or v.get('skipped'))[:60]}")
            continue
        print(f"{v['name']:28s} {v['blocks']:6d} {'on' if v['activation_checkpointing'] else 'off':>3} "
              f"{'on' if v['compile'] else 'off':>4} {v['sdpa']:>7} {v['step_s']:7.3f} {_fmt(v['model_tflops'], '8.1f')} "
              f"{_fmt(v.get('mfu'), '6.3f')} {_fmt(v.get('peak_gpu_gib'), '8.2f')}")
    sys.stdout.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny config, small latent")
    p.add_argument("--blocks", type=int, default=0, help="transformer blocks of the main variants (0: as fit)")
    p.add_argument("--no-ac-blocks", type=int, default=3, help="blocks for the checkpointing-off variant (first try)")
    p.add_argument("--deadline-s", type=float, default=400.0, help="skip variants that would end after this")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/train.json; --tiny: /tmp)")
    p.add_argument("--profile-out", default=None, help="profile summary text (next to the JSON by default)")
    p.add_argument("--no-expandable-segments", action="store_true")
    p.add_argument("--from-json", default=None, help="no GPU: recompute the derived figures of a result JSON "
                   "(its measured variants kept as they are) and write --out / --profile-out")
    p.add_argument("--profile-in", default=None, help="with --from-json: the profile text that run wrote")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if not args.no_expandable_segments:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    import torch

    from cosmos_lib.train import bench
    from cosmos_lib.train.metrics import train_flops_per_sample
    from cosmos_lib.train.model import transformer_config
    from cosmos_lib.train.parallel import init_distributed

    default_dir = Path("/tmp/cosmos_train_bench_tiny") if args.tiny else REPO / "benchmarks" / "results"
    out_path = Path(args.out) if args.out else default_dir / "train.json"
    prof_path = Path(args.profile_out) if args.profile_out else out_path.with_name("train_profile.txt")

    device = torch.device("cpu") if args.from_json else init_distributed("cpu" if args.tiny else "cuda").device
    size, task = ("tiny", "text2world") if args.tiny else ("7B", "text2world")
    latent = (16, 2, 8, 8) if args.tiny else (16, 16, 88, 160)
    cfg_full = transformer_config(size, task)
    p_t, p_h, p_w = cfg_full["patch_size"]
    tokens = latent[1] // p_t * (latent[2] // p_h) * (latent[3] // p_w)

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu_name, gpu_total_gib = props.name, props.total_memory / GIB
    else:
        gpu_name, gpu_total_gib = "cpu (smoke run)", None
    peak, peak_key = bench.peak_bf16_flops(gpu_name) if device.type == "cuda" else (None, "cpu")

    import diffusers

    result: dict = {
        "benchmark": "Cosmos-1.0 DiT training step, one GPU (benchmarks/train.py)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": {"gpu": gpu_name, "gpu_total_gib": gpu_total_gib, "gpu_count_used": 1,
                     "peak_bf16_tflops": peak / 1e12 if peak else None, "peak_table_entry": peak_key,
                     "cpu_count": os.cpu_count(), "host": platform.node()},
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "env": {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")},
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "diffusers": diffusers.__version__, "python": platform.python_version(),
        "config": {
            "model": f"Cosmos-1.0-Diffusion-{size}-Text2World architecture, random weights" if not args.tiny else "tiny",
            "full_layers": cfg_full["num_layers"], "latent_shape": list(latent),
            "video": "121x704x1280" if not args.tiny else "tiny", "tokens_per_sample": tokens, "text_tokens": 512,
            "micro_batch": 1,
            "settings": {
                "fsdp": "FSDP2 fully_shard per block + root (cosmos_lib.train.parallel.parallelize), world size 1",
                "precision": "MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32); fp32 master weights, "
                             "fp32 grads, fp32 AdamW state",
                "activation_checkpointing": "per block, checkpoint_wrapper (non-reentrant), full recompute",
                "compile": "per block module.compile() (default inductor), inside the checkpoint wrapper",
                "optimizer": "torch.optim.AdamW(foreach=True, lr=1e-6, betas=(0.9,0.99), wd=0.1) + clip_grad_norm_(1.0)",
                "objective": "cosmos_lib.train.objective (EDM, sigma_data 0.5), fps 24, zero padding mask",
                "attention": "diffusers native backend -> torch SDPA (variant 'cudnn' forces SDPBackend.CUDNN_ATTENTION)",
            },
        },
        "mfu_definition": "model FLOPs (torch.utils.flop_counter on the forward of one sample, x3 for fwd+bwd; "
                          "recomputation not counted) / step time / dense bf16 peak of the GPU",
        "variants": [],
    }

    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        gpu_name, gpu_total_gib = result["hardware"]["gpu"], result["hardware"]["gpu_total_gib"]
        result["resummarized"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "note": "derived figures recomputed on the CPU from the measured variants of the run above (that run: "
                    "diffusers wheel installed with pip --target /tmp/site, PYTHONPATH=/tmp/site:$PWD, then 'command')"}

    def save() -> None:
        _atomic_write(out_path, json.dumps(result, indent=1, default=str) + "\n")

    flops_cache: dict[int, dict] = {}

    def flops_for(blocks: int) -> dict:
        if blocks not in flops_cache:
            cfg = dict(cfg_full, num_layers=blocks)
            f = bench.forward_flops(cfg, latent)
            f["train_per_sample"] = train_flops_per_sample(cfg, latent)  # the trainer's own count
            flops_cache[blocks] = f
        return flops_cache[blocks]

    profile_texts: dict[str, str] = {}

    def summarize() -> None:
        """Everything derived from the variants measured so far; JSON and profile rewritten."""
        variants = result["variants"]
        main_rec = next((v for v in variants if v.get("name") == "ac+compile"), {})
        ok = {v["name"]: v for v in variants if "step_s" in v}
        if "step_s" in main_rec:
            result["main"] = {k: main_rec[k] for k in ("name", "blocks", "activation_checkpointing", "compile", "step_s",
                                                       "samples_per_s", "model_tflops", "mfu", "peak_gpu_gib",
                                                       "peak_gpu_reserved_gib") if k in main_rec}
            result["step_time_s"] = main_rec["step_s"]
            result["mfu"] = main_rec.get("mfu")
            result["peak_gpu_gib"] = main_rec.get("peak_gpu_gib")
            f = flops_for(main_rec["blocks"])
            result["flops"] = {"forward_per_sample_main": f["total"], "attention_share": f["attention"] / f["total"],
                               "train_per_sample_main": f["train_per_sample"],
                               "train_per_sample_full_7B": flops_for(cfg_full["num_layers"])["train_per_sample"],
                               "by_op_main": f["by_op"]}
            full_flops = result["flops"]["train_per_sample_full_7B"]
            result["full_7B_estimate"] = {
                "step_s_per_sample_one_gpu_compute": full_flops / (main_rec["model_tflops"] * 1e12),
                "note": "full 7B at this run's model TFLOP/s (block-dominated), communication not included",
            }
        cmp = {}
        if "ac+compile" in ok and "ac eager" in ok and ok["ac+compile"]["blocks"] == ok["ac eager"]["blocks"]:
            a, b = ok["ac+compile"], ok["ac eager"]
            cmp = {"speedup": b["step_s"] / a["step_s"], "memory_saved_gib": b.get("peak_gpu_gib", 0) - a.get("peak_gpu_gib", 0),
                   "text": f"compile: {b['step_s'] / a['step_s']:.2f}x faster than eager "
                           f"({b['step_s']:.2f} -> {a['step_s']:.2f} s), "
                           f"{b.get('peak_gpu_gib', 0) - a.get('peak_gpu_gib', 0):.1f} GiB less peak memory"}
            result["compile_vs_eager"] = cmp
        for base, alt in (("ac+compile", "ac+compile sdpa=cudnn"), ("ac eager", "ac eager sdpa=cudnn")):
            if base in ok and alt in ok and ok[base]["blocks"] == ok[alt]["blocks"]:
                a, b = ok[base], ok[alt]
                result["cudnn_attention_vs_default"] = {
                    "compared": [base, alt], "speedup": a["step_s"] / b["step_s"],
                    "mfu_default": a.get("mfu"), "mfu_cudnn": b.get("mfu"),
                    "step_s_default": a["step_s"], "step_s_cudnn": b["step_s"],
                "attention_kernels_cudnn_variant": [k["name"] for k in (b.get("profile") or {}).get("top_kernels", [])
                                                    if k["category"] == "attention"][:4]}
        no_ac_ok = next((v for v in variants if v.get("name") == "no-ac eager" and "step_s" in v), None)
        small_ok = next((v for v in variants if v.get("name", "").startswith("ac eager (") and "step_s" in v), None)
        if no_ac_ok and small_ok:
            result["activation_checkpointing_on_vs_off"] = {
                "blocks": no_ac_ok["blocks"], "step_s_off": no_ac_ok["step_s"], "step_s_on": small_ok["step_s"],
                "mfu_off": no_ac_ok.get("mfu"), "mfu_on": small_ok.get("mfu"),
                "peak_gpu_gib_off": no_ac_ok.get("peak_gpu_gib"), "peak_gpu_gib_on": small_ok.get("peak_gpu_gib"),
                "activation_gib_per_block_without_ac": ((no_ac_ok.get("peak_gpu_gib") or 0) - (small_ok.get("peak_gpu_gib") or 0))
                / no_ac_ok["blocks"] if gpu_total_gib else None,
                "note": f"checkpointing off measured at {no_ac_ok['blocks']} blocks (more do not fit with it off)",
            }
        result["memory_8_gpus"] = memory_arithmetic(variants, tokens, task, gpu_total_gib)
        if "step_s" in main_rec:
            f = flops_for(main_rec["blocks"])
            onoff = result.get("activation_checkpointing_on_vs_off") or {}
            ratio = onoff["step_s_on"] / onoff["step_s_off"] if onoff.get("step_s_off") else None
            result["goal"] = goal_analysis(main_rec, f, ratio, onoff.get("activation_gib_per_block_without_ac"),
                                           result.get("memory_8_gpus"), cmp, result.get("cudnn_attention_vs_default"),
                                           result.get("torch", ""))
            prof = main_rec.get("profile") or {}
            result["profile_short"] = {"variant": main_rec["name"], "blocks": main_rec["blocks"],
                                       "share_of_kernel_time": result["goal"].get("share_of_kernel_time")
                                       or prof.get("share_of_kernel_time"),
                                       "kernel_time_over_wall": result["goal"].get("kernel_time_over_wall",
                                                                                   prof.get("kernel_time_over_wall")),
                                       "top_kernels": (prof.get("top_kernels") or [])[:8],
                                       "error": main_rec.get("profile_error")}
        save()
        profile_text = profile_texts.get(main_rec.get("name"))
        if profile_text:
            profile_text = str(profile_text)
            for name, text in profile_texts.items():
                if name != main_rec.get("name"):
                    profile_text += f"\n\n===== variant {name} =====\n" + text.split("\noperators")[0]
            head = [f"Cosmos-1.0 7B training step profile ({'tiny smoke run' if args.tiny else 'real config'})",
                    f"date {result['date']}, {gpu_name}, torch {result.get('torch')}, command: {result['command']}",
                    f"variant {main_rec.get('name')}: {main_rec.get('blocks')} blocks, AC on, compile on, "
                    f"{tokens} tokens/sample, step {main_rec.get('step_s', 0):.3f} s, MFU {_fmt(main_rec.get('mfu'), '.3f')}", ""]
            goal = result.get("goal", {})
            if goal.get("limits"):
                head += [f"MFU {goal['mfu']:.3f} against the goal {MFU_GOAL}: missed by {goal['missed_by_abs']:.3f} "
                         f"({goal['missed_by_rel'] * 100:.0f}% short)", "what limits it:"]
                head += [f"  - {x}" for x in goal["limits"]] + ["what would close the gap:"]
                head += [f"  - {x}" for x in goal.get("what_would_close_the_gap", [])] + [""]
                if goal.get("share_of_kernel_time"):
                    head += ["share of GPU kernel time (annotation ranges excluded): " + ", ".join(
                        f"{c} {v * 100:.1f}%" for c, v in goal["share_of_kernel_time"].items()), ""]
            _atomic_write(prof_path, "\n".join(head) + profile_text + "\n")

    per_block_s = [None]  # seconds per block per step, learnt from the first variant

    def run(variant: bench.Variant, fallbacks=()) -> dict:
        """Run a variant; on out-of-memory retry with the next block count in ``fallbacks``."""
        tries = [variant.blocks, *fallbacks]
        rec: dict = {}
        for blocks in tries:
            v = bench.Variant(**{**variant.__dict__, "blocks": blocks})
            elapsed = time.perf_counter() - t_start
            est = 15 + (75 if v.compile else 0)
            if per_block_s[0]:
                est += (v.warmup + v.steps + (1 if v.profile else 0)) * per_block_s[0] * blocks * (1.2 if not v.compile else 1.0)
            if elapsed + est > args.deadline_s:
                rec = {"name": v.name, "blocks": blocks, "skipped": f"time: {elapsed:.0f}s + est {est:.0f}s > deadline {args.deadline_s:.0f}s"}
                break
            f = flops_for(blocks)
            oom = None
            try:
                rec = bench.run_variant(size, task, latent, v, device, flops_per_sample=f["train_per_sample"], peak=peak)
            except torch.OutOfMemoryError as exc:
                oom = f"out of memory at {blocks} blocks: {str(exc).splitlines()[0][:200]}"
            except Exception as exc:  # keep the other variants' results
                rec = {"name": v.name, "blocks": blocks, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                break
            if oom is None:
                rec["flops_forward_per_sample"] = {k: f[k] for k in ("total", "attention", "matmul")}
                if rec["blocks"] != variant.blocks:
                    rec["note"] = f"{variant.blocks} blocks ran out of memory; measured at {rec['blocks']}"
                if not per_block_s[0]:
                    per_block_s[0] = rec["step_s"] / blocks
                break
            import gc

            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rec = {"name": v.name, "blocks": blocks, "error": oom}
            print(f"[{time.perf_counter() - t_start:6.1f}s] {v.name}: {oom}", flush=True)
        if "profile_text" in rec:
            profile_texts[rec["name"]] = rec.pop("profile_text")
        result["variants"].append(rec)
        save()
        try:
            summarize()
        except Exception as exc:  # a summary bug must not cost the remaining measurements
            result["summary_error"] = f"{type(exc).__name__}: {exc}"
            save()
        print(f"[{time.perf_counter() - t_start:6.1f}s] {rec.get('name')}: "
              + json.dumps({k: rec.get(k) for k in ("blocks", "step_s", "model_tflops", "mfu", "peak_gpu_gib",
                                                      "error", "skipped")}, default=str), flush=True)
        return rec

    if args.from_json:
        if args.profile_in:
            text = Path(args.profile_in).read_text()
            profile_texts["ac+compile"] = text[text.index("one profiled training step"):].rstrip("\n")
        summarize()
        print_table(result["variants"])
        print(f"wrote {out_path}" + (f" and {prof_path}" if args.profile_in else ""))
        return 0

    if args.tiny:
        blocks = args.blocks or 4
        fallbacks, no_ac_blocks, no_ac_fallbacks = (2,), 2, (1,)
    else:
        # ~4.05 GiB per checkpointed 7B block (16 B/param state + kept input) on ~22 GiB of working
        # set (docs/training.md, measured on an H100): leave a few GiB of slack
        blocks = args.blocks or max(1, int((gpu_total_gib - 26.0) // 4.05))
        fallbacks = tuple(b for b in (blocks - 2, blocks - 4, 2) if 0 < b < blocks)
        no_ac_blocks, no_ac_fallbacks = args.no_ac_blocks, tuple(b for b in (2, 1) if b < args.no_ac_blocks)
    result["config"]["blocks"] = blocks
    result["config"]["blocks_rule"] = ("largest count expected to fit: (GPU memory - 26 GiB) / 4.05 GiB per "
                                       "checkpointed block; on out-of-memory the next smaller count")
    save()

    # (1) the trainer's fast settings: AC + compile, with a profile of one more step
    main_rec = run(bench.Variant("ac+compile", blocks, True, True, warmup=2, steps=3, profile=True), fallbacks)
    try:
        from torch._dynamo.utils import counters

        main_rec["dynamo_stats"] = {k: int(v) for k, v in counters.get("stats", {}).items()}
        torch._dynamo.reset()
    except Exception:
        pass
    blocks = main_rec.get("blocks", blocks) if "step_s" in main_rec else blocks
    result["config"]["blocks"] = blocks
    save()
    # (2) compile off, (3) AC off at fewer blocks, (4) AC on at that count, (5) cuDNN attention
    eager = run(bench.Variant("ac eager", blocks, True, False, warmup=1, steps=2),
                tuple(b for b in (blocks - 2, 2) if 0 < b < blocks))
    no_ac = run(bench.Variant("no-ac eager", no_ac_blocks, False, False, warmup=1, steps=2), no_ac_fallbacks)
    small = no_ac.get("blocks", no_ac_blocks) if "step_s" in no_ac else 2
    run(bench.Variant(f"ac eager ({small} blocks)", small, True, False, warmup=1, steps=2))
    # cuDNN attention compiled if the time left allows a second compilation, else eager
    left = args.deadline_s - (time.perf_counter() - t_start)
    need = 15 + 75 + 5 * (per_block_s[0] or 0) * blocks
    if left > need:
        run(bench.Variant("ac+compile sdpa=cudnn", blocks, True, True, sdpa="cudnn", warmup=2, steps=2, profile=True))
    else:
        run(bench.Variant("ac eager sdpa=cudnn", eager.get("blocks", blocks), True, False, sdpa="cudnn",
                          warmup=1, steps=2))

    summarize()
    variants = result["variants"]
    profile_text = profile_texts.get("ac+compile")
    print()
    print_table(variants)
    if result.get("memory_8_gpus"):
        print("\nper GPU on 8 GPUs (FSDP), full models:")
        for name, row in result["memory_8_gpus"]["models"].items():
            print(f"  {name}: state {row['sharded_state_gib']:.1f} + kept activations {row['kept_activations_gib']:.1f} "
                  f"+ working {row['working_set_gib']:.1f} + comm {COMM_ALLOWANCE_GIB:.0f} = {row['total_gib']:.1f} GiB (bound {row['total_gib_bound']:.1f})"
                  f" of {_fmt(result['memory_8_gpus']['gpu_total_gib'], '.1f')}")
    print(f"\nwrote {out_path}" + (f" and {prof_path}" if profile_text else "") +
          f" in {time.perf_counter() - t_start:.0f} s", flush=True)
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
