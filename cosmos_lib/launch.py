"""Training launch geometry: how many processes, on how many nodes, meeting where.

One entry for every case, so the workflow's train rule never changes with the geometry:

    python -m cosmos_lib.launch --nproc-per-node G --nnodes N [--device cuda|cpu|auto] -- \\
        -m cosmos_lib.train <train args>

- one node: ``torchrun --standalone --nproc_per_node G`` (a local rendezvous, no ports to agree on);
- several nodes under SLURM: one launcher task per node (``srun --ntasks-per-node=1``), each running
  ``torchrun --nnodes N --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint <first node>:<port>
  --rdzv_id <SLURM_JOB_ID>``. Called from a batch script (not inside an srun step), the launcher
  starts that srun step itself; called inside a step (``srun ... python -m cosmos_lib.launch``) it
  starts torchrun directly;
- several nodes outside SLURM: needs ``MASTER_ADDR`` (and optionally ``MASTER_PORT``) set on every
  node, as torchrun's own multi-node recipe does.

Before torchrun starts, ``check_visible_gpus`` compares the GPUs this node sees with the GPUs the
job asked for (one per process), so a mis-sized allocation fails in seconds with both numbers named
rather than as a hang in NCCL or a silently smaller run.

The torchrun options follow PyTorch's ``torch.distributed.run`` (elastic launch) documentation; the
SLURM recipe (first host of ``SLURM_JOB_NODELIST`` as c10d endpoint, job id as rendezvous id, one
task per node) follows torchtitan's ``multinode_trainer.slurm``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence

DEFAULT_PORT = 29500


class LaunchError(RuntimeError):
    """The launch geometry cannot be built from the arguments and the environment."""


class GPUMismatchError(LaunchError):
    """The GPUs this process sees differ from the GPUs the job asked for."""


# --- SLURM hostlists ------------------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top_level(expr: str) -> list[str]:
    """Split a hostlist at commas that are outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise LaunchError(f"nested brackets in SLURM hostlist {expr!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LaunchError(f"unbalanced ']' in SLURM hostlist {expr!r}")
        elif ch == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    if depth != 0:
        raise LaunchError(f"unbalanced '[' in SLURM hostlist {expr!r}")
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_ranges(ranges: str, expr: str) -> list[str]:
    """``01-03,07`` -> ``['01', '02', '03', '07']`` keeping the zero padding of each range."""
    out = []
    for item in ranges.split(","):
        m = _RANGE.match(item.strip())
        if not m:
            raise LaunchError(f"bad range {item!r} in SLURM hostlist {expr!r}")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise LaunchError(f"descending range {item!r} in SLURM hostlist {expr!r}")
        width = len(lo)
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def expand_hostlist(expr: str) -> list[str]:
    """Expand SLURM's compact hostlist syntax, as ``scontrol show hostnames`` does.

    ``node[01-03,07],gpu5`` -> ``['node01', 'node02', 'node03', 'node07', 'gpu5']``;
    several bracket groups in one name give their product (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2).
    """
    if not expr or not expr.strip():
        raise LaunchError("empty SLURM hostlist")
    hosts: list[str] = []
    for part in _split_top_level(expr.strip()):
        names = [""]
        pos = 0
        for m in re.finditer(r"\[([^\]]*)\]", part):
            prefix = part[pos:m.start()]
            names = [n + prefix + r for n in names for r in _expand_ranges(m.group(1), expr)]
            pos = m.end()
        names = [n + part[pos:] for n in names]
        hosts.extend(names)
    return hosts


# --- geometry -------------------------------------------------------------------------------------

def _slurm_nodelist(env: Mapping[str, str]) -> str | None:
    """The nodes of this srun step, else of the job."""
    return env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")


def in_slurm_job(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a SLURM allocation. Only SLURM_JOB_ID is relied on: Snakemake's slurm-jobstep
    executor removes the other SLURM_* variables before it runs a job's command."""
    return bool(env.get("SLURM_JOB_ID"))


def in_slurm_step(env: Mapping[str, str] = os.environ) -> bool:
    """True inside an srun step (the batch script itself has no step id)."""
    return in_slurm_job(env) and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)


def rendezvous_port(env: Mapping[str, str] = os.environ) -> int:
    """MASTER_PORT if set, else 29500 + (job id mod 1000) under SLURM (jobs sharing a first node
    then rarely collide), else 29500."""
    if env.get("MASTER_PORT"):
        try:
            port = int(env["MASTER_PORT"])
        except ValueError:
            raise LaunchError(f"MASTER_PORT={env['MASTER_PORT']!r} is not a port number") from None
        if not 0 < port < 65536:
            raise LaunchError(f"MASTER_PORT={port} is outside 1..65535")
        return port
    job_id = env.get("SLURM_JOB_ID", "")
    if job_id.isdigit():
        return DEFAULT_PORT + int(job_id) % 1000
    return DEFAULT_PORT


def torchrun_args(nproc_per_node: int, nnodes: int, env: Mapping[str, str] = os.environ) -> list[str]:
    """The torchrun options (without the training program) for this geometry.

    One node: ``--standalone``. Several nodes: a c10d rendezvous at the first host of the SLURM
    step/job (rendezvous id = job id), or at MASTER_ADDR outside SLURM (MASTER_ADDR, when set, is
    the rendezvous host under SLURM too).
    """
    if nproc_per_node < 1:
        raise LaunchError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    if nnodes < 1:
        raise LaunchError(f"nnodes must be >= 1, got {nnodes}")
    if nnodes == 1:
        return ["--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc_per_node)]

    if in_slurm_job(env):
        if not _slurm_nodelist(env):
            raise LaunchError(
                f"SLURM job {env['SLURM_JOB_ID']} but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST: "
                "start the multi-node launcher inside an srun step (one task per node), or from "
                "the batch script, where it starts that step itself"
            )
        hosts = expand_hostlist(_slurm_nodelist(env))
        if len(hosts) != nnodes:
            raise LaunchError(
                f"asked for {nnodes} nodes but SLURM job {env['SLURM_JOB_ID']} runs on {len(hosts)} "
                f"({_slurm_nodelist(env)}); --nnodes (train.nnodes) and the job's nodes must agree"
            )
        step_tasks = env.get("SLURM_STEP_NUM_TASKS")
        if step_tasks is not None and step_tasks.isdigit() and int(step_tasks) != nnodes:
            raise LaunchError(
                f"the srun step runs {step_tasks} tasks on {nnodes} nodes; the launcher needs exactly "
                "one task per node (srun --nodes=N --ntasks=N --ntasks-per-node=1)"
            )
        endpoint_host = env.get("MASTER_ADDR") or hosts[0]
        rdzv_id = env["SLURM_JOB_ID"]
    elif env.get("MASTER_ADDR"):
        endpoint_host = env["MASTER_ADDR"]
        rdzv_id = env.get("RDZV_ID", "cosmos-posttrain")
    else:
        raise LaunchError(
            f"{nnodes} nodes asked for, but this is neither a SLURM job (no SLURM_JOB_ID) nor is "
            "MASTER_ADDR set: run under SLURM (sbatch --nodes "
            f"{nnodes}), or start the launcher on every node with MASTER_ADDR=<first node> "
            "(and MASTER_PORT) exported"
        )
    return [
        "--nnodes", str(nnodes),
        "--nproc_per_node", str(nproc_per_node),
        "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"{endpoint_host}:{rendezvous_port(env)}",
        "--rdzv_id", str(rdzv_id),
    ]


# --- job geometry as Snakemake resources ------------------------------------------------------------

def slurm_resources(nproc_per_node: int, nnodes: int, device: str = "cuda",
                    gpu_model: str | None = None) -> dict[str, int | str]:
    """The Snakemake resources of a training job with this geometry, in the names of
    snakemake-executor-plugin-slurm 2.x (its submit_string.py / utils.set_gres_string and the
    slurm-jobstep executor). For the train rule: ``resources: **slurm_resources(...)``.

    - one node: ``gpu=G`` (sbatch ``--gpus=G``, or ``--gpus=<model>:G``) and ``nodes=1``; the jobstep
      runs the rule in a one-task srun step and the launcher starts ``torchrun --standalone``;
    - N nodes: ``nodes=N`` and ``gres='gpu:G'`` (``--gres`` counts per node, so every node gets G
      GPUs; ``--gpus`` would count for the whole job), ``tasks=N`` (``--ntasks=N``: one task per
      node), ``mpi='srun'`` so that the jobstep runs the rule's command in the batch script instead
      of inside a one-node ``srun -n1`` step (the launcher then starts the one-task-per-node srun
      step itself), and ``tasks_per_gpu=0`` so that the plugin does not turn ``tasks`` into
      ``--ntasks-per-gpu``;
    - device ``cpu``: the same without GPUs (``gpu=0``).
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise LaunchError(f"nproc_per_node and nnodes must be >= 1, got {nproc_per_node}, {nnodes}")
    gpus = 0 if device == "cpu" else nproc_per_node
    if nnodes == 1:
        res: dict[str, int | str] = {"gpu": gpus, "nodes": 1}
        if gpus and gpu_model:
            res["gpu_model"] = gpu_model
        return res
    res = {"gpu": 0, "nodes": nnodes, "tasks": nnodes, "tasks_per_gpu": 0, "mpi": "srun"}
    if gpus:
        res["gres"] = f"gpu:{gpu_model}:{gpus}" if gpu_model else f"gpu:{gpus}"
    return res


# --- GPU check ------------------------------------------------------------------------------------

def check_visible_gpus(expected: int, env: Mapping[str, str] = os.environ,
                       device_count: int | None = None) -> int:
    """Fail unless this node sees exactly ``expected`` GPUs; ``expected`` 0 (a CPU run) always passes.

    ``torch.cuda.device_count()`` already honours CUDA_VISIBLE_DEVICES, which SLURM sets from the
    job's GPU allocation (Snakemake itself never sets it). Returns the number seen.
    """
    if expected < 0:
        raise LaunchError(f"expected GPU count must be >= 0, got {expected}")
    if expected == 0:
        return 0
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    if device_count != expected:
        details = ", ".join(
            f"{k}={env[k]!r}" if k in env else f"{k} unset"
            for k in ("CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_JOB_ID")
        )
        hint = ("no GPU is visible: is this a GPU node, and did the rule ask for GPUs (resources gpu=N "
                "or gres='gpu:N')?" if device_count == 0 else
                "the rule's gpu/gres resource and the process count per node must agree")
        raise GPUMismatchError(
            f"this job asked for {expected} GPU(s) per node (one per training process) but sees "
            f"{device_count} ({details}); {hint}"
        )
    return device_count


# --- commands -------------------------------------------------------------------------------------

def launch_argv(nproc_per_node: int, nnodes: int, device: str) -> list[str]:
    """The launcher's own options (what ``python -m cosmos_lib.launch`` needs before ``--``)."""
    return ["--nproc-per-node", str(nproc_per_node), "--nnodes", str(nnodes), "--device", device]


def srun_command(nproc_per_node: int, nnodes: int, device: str, program: Sequence[str],
                 python: str = sys.executable) -> list[str]:
    """srun with one launcher task per node (the step gets all CPUs and GPUs of the job on each node,
    SLURM's default for steps), each running this launcher again, which then starts torchrun."""
    return [
        "srun", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
        "--cpu-bind=none", "--kill-on-bad-exit=1",
        python, "-m", "cosmos_lib.launch", *launch_argv(nproc_per_node, nnodes, device), "--", *program,
    ]


def torchrun_command(nproc_per_node: int, nnodes: int, program: Sequence[str],
                     env: Mapping[str, str] = os.environ, python: str = sys.executable) -> list[str]:
    """``python -m torch.distributed.run <geometry> <program>`` (torchrun without relying on PATH)."""
    if not program:
        raise LaunchError("no training program given after '--' (e.g. -- -m cosmos_lib.train ...)")
    return [python, "-m", "torch.distributed.run", *torchrun_args(nproc_per_node, nnodes, env), *program]


def resolve_device(device: str, device_count: int | None = None) -> str:
    if device not in ("auto", "cuda", "cpu"):
        raise LaunchError(f"--device must be auto, cuda or cpu, got {device!r}")
    if device != "auto":
        return device
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    return "cuda" if device_count > 0 else "cpu"


def plan(nproc_per_node: int, nnodes: int, device: str, program: Sequence[str],
         env: Mapping[str, str] = os.environ) -> list[str]:
    """The command this launcher execs: srun (multi-node, from a batch script) or torchrun."""
    if nnodes > 1 and in_slurm_job(env) and not in_slurm_step(env):
        return srun_command(nproc_per_node, nnodes, device, program)
    if device == "cuda":
        check_visible_gpus(nproc_per_node, env)
    return torchrun_command(nproc_per_node, nnodes, program, env)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cosmos_lib.launch",
        description="Start distributed training with torchrun for this node/job geometry.",
        epilog="Everything after '--' is the training program as torchrun takes it, "
               "e.g. '-- -m cosmos_lib.train --config run.yaml'.",
    )
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="training processes per node; on GPUs one per GPU (default 1)")
    p.add_argument("--nnodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when a GPU is visible)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        own, program = argv[:i], argv[i + 1:]
    else:
        own, program = argv, []
    args = _parser().parse_args(own)
    try:
        device = resolve_device(args.device)
        cmd = plan(args.nproc_per_node, args.nnodes, device, program)
    except LaunchError as e:
        print(f"cosmos_lib.launch: error: {e}", file=sys.stderr)
        return 2
    print(f"cosmos_lib.launch: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
