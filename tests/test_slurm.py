"""The demo workflow through a real SLURM cluster (sbatch, slurmctld, slurmd), end to end.

Needs a running cluster: `sudo .ci/slurm_cluster.sh` starts a one-node one on localhost (CI does).
Run with `pytest -m slurm`. Without a cluster answering `sinfo`, these tests are skipped.

The run uses profiles/slurm/profile.yaml itself, changed only where a CPU-only test node needs it
(derived in `cpu_profile`): no GPUs (gpu=0), memory that fits the node, and the plugin's squeue
status command (the test cluster has no slurmdbd; `sacct -c` reads its job completion records).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COMPUTE_RULES = {"encode_prompts", "encode_video", "train"}  # must go through sbatch
LOCAL_RULES = {"download_model", "dataset", "demo_video", "demo_models", "train_check"}


def _cluster_state() -> str | None:
    """Why no usable cluster, or None when one answers."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client tools (sinfo, sbatch) not installed; start a cluster: sudo .ci/slurm_cluster.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"no SLURM node is up (sinfo: {out.stdout.strip() or out.stderr.strip()}); run sudo .ci/slurm_cluster.sh"
    return None


def _skip_without_cluster(config) -> None:
    if "slurm" not in (config.option.markexpr or ""):
        pytest.skip("submits real SLURM jobs: run with `pytest -m slurm`")
    why_not = _cluster_state()
    if why_not:
        pytest.skip(why_not)


@pytest.fixture(autouse=True)
def _needs_cluster(request):
    """Tests marked slurm run only when asked for (`pytest -m slurm`: they submit real jobs and take
    minutes) and when a cluster answers."""
    if request.node.get_closest_marker("slurm") is not None:
        _skip_without_cluster(request.config)


def _node_memory_mb() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True, text=True, timeout=15)
    values = [int(re.sub(r"\D", "", v)) for v in out.stdout.split() if re.sub(r"\D", "", v)]
    return min(values) if values else 2000


def _node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=15)
    values = [int(re.sub(r"\D", "", v)) for v in out.stdout.split() if re.sub(r"\D", "", v)]
    return min(values) if values else 1


def load_profile(path: Path) -> dict:
    """The profile as Snakemake reads it (yte templating included)."""
    import yte

    with open(path) as f:
        return yte.process_yaml(f, require_use_yte=True)


def cpu_profile(slurm_profile: dict, mem_mb: int, cores: int) -> dict:
    """profiles/slurm for a CPU-only test node: every GPU count to 0, memory that fits the node,
    squeue for job status (no slurmdbd), SLURM logs kept so the test can read job ids."""
    prof = {k: v for k, v in slurm_profile.items() if not k.startswith("__")}
    assert prof["executor"] == "slurm"
    for rule, res in prof.get("set-resources", {}).items():
        res["gpu"] = 0
        res.pop("gpu_model", None)
        if "mem_mb" in res:
            res["mem_mb"] = mem_mb
    prof["default-resources"]["mem_mb"] = mem_mb
    # the profile's per-submission GPU budget serialises the videos of a group job on its GPU; with
    # no GPUs, the node's cores do that (a group job never asks for more cores than the node has)
    prof["cores"] = cores
    prof["slurm-status-command"] = "squeue"
    prof["slurm-init-seconds-before-status-checks"] = 3
    prof["slurm-keep-successful-logs"] = True
    prof["latency-wait"] = 5
    prof["retries"] = 0
    return prof


def _copy_workflow(dest: Path) -> None:
    """The checkout's files (tracked and new, not ignored: no results, no .venv) into dest."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _run(workdir: Path, profile: Path, *targets: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        del env[k]
    cmd = [*SNAKEMAKE, *targets, "--workflow-profile", str(profile), "--configfile", "config/demo.yaml"]
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    (workdir / f"snakemake_{'_'.join(targets)}.out").write_text(r.stdout + r.stderr)
    return r


def _slurm_jobs_from_logs(logdir: Path) -> dict[str, str]:
    """SLURM job id -> rule (or group) name, from the plugin's per-job logs
    <logdir>/rule_<name>/[<wildcards>/]<jobid>.log or group_<name>/..."""
    jobs = {}
    for log in logdir.rglob("*.log"):
        top = log.relative_to(logdir).parts[0]
        if log.stem.isdigit():
            jobs[log.stem] = re.sub(r"^(rule|group)_", "", top)
    return jobs


def _run_uuid(output: str) -> str:
    """The plugin names every job of a run after the run's UUID ("SLURM run ID: <uuid>")."""
    m = re.search(r"SLURM run ID: (\S+)", output)
    assert m, "the SLURM executor did not start (no 'SLURM run ID' in Snakemake's output)"
    return m.group(1)


def _sacct_completion(run_uuid: str) -> dict[str, str]:
    """job id -> state of a run's jobs, from the job completion records (`sacct -c`, which needs no
    slurmdbd); jobs are selected by name, so records of earlier runs (or reused ids) do not count."""
    out = subprocess.run(["sacct", "-c", "-n", "-P", "--name", run_uuid,
                          "--format=JobID,JobName,State,ExitCode"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"sacct -c failed: {out.stderr}"
    rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
    return {row[0]: row[2] for row in rows if row[1] == run_uuid}


def _idle_nodes() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=15)
    return sum(1 for s in out.stdout.split() if s.startswith("idle"))


def _squeue_comments(job_ids) -> dict[str, str]:
    """job id -> the comment the plugin gave the job (rule_<name>...); finished jobs stay listed
    for MinJobAge seconds."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%k", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=30)
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


@pytest.fixture(scope="module")
def slurm_run(request, tmp_path_factory):
    _skip_without_cluster(request.config)  # a module fixture is set up before the autouse check
    work = tmp_path_factory.mktemp("slurm_demo")
    _copy_workflow(work)
    prof_dir = work / "profiles" / "slurm_cpu_test"
    prof_dir.mkdir(parents=True)
    mem = max(500, min(2000, _node_memory_mb() // 4))
    prof = cpu_profile(load_profile(REPO / "profiles" / "slurm" / "profile.yaml"), mem, _node_cpus())
    (prof_dir / "profile.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return work, prof_dir


def test_profile_derivation_only_touches_gpu_memory_and_status():
    """(no cluster needed)"""
    slurm = load_profile(REPO / "profiles" / "slurm" / "profile.yaml")
    prof = cpu_profile(load_profile(REPO / "profiles" / "slurm" / "profile.yaml"), 1000, 2)
    assert prof["group-components"] == slurm["group-components"]
    assert prof["set-resources"]["encode_video"]["runtime"] == slurm["set-resources"]["encode_video"]["runtime"]
    assert all(r["gpu"] == 0 for r in prof["set-resources"].values())


@pytest.mark.slurm
def test_demo_dataset_through_sbatch(slurm_run):
    work, prof_dir = slurm_run
    t0 = time.time()
    r = _run(work, prof_dir, "all")
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "SLURM run ID" in r.stderr + r.stdout  # the slurm executor ran, not the local one

    # the dataset: complete samples in the flat folder
    from cosmos_lib import sample_format

    prefixes = sample_format.complete_prefixes(work / "results" / "dataset")
    assert len(prefixes) >= 2, f"no samples in {work / 'results' / 'dataset'}"
    assert (work / "results" / "summary.tsv").is_file()

    jobs = _slurm_jobs_from_logs(work / "logs" / "slurm")
    names = set(jobs.values())
    assert "encode_prompts" in names, jobs
    assert any("encode" in n and n != "encode_prompts" for n in names), jobs  # the encode group
    assert not names & {"download_model", "dataset", "demo_video", "demo_models"}, (
        f"local rules went to SLURM: {names}")
    # 5 demo videos, one group job: several videos per SLURM job
    assert len([n for n in names if n != "encode_prompts"]) < 5

    states = _sacct_completion(_run_uuid(r.stdout + r.stderr))
    assert set(states) == set(jobs), f"sacct -c: {states}, the plugin's logs: {jobs}"
    for job_id, name in jobs.items():
        assert states.get(job_id) == "COMPLETED", f"sacct -c has job {job_id} ({name}) as {states.get(job_id)}"
    comments = _squeue_comments(jobs)
    assert any(c.startswith("rule_encode_prompts") for c in comments.values()), comments

    # inside a group job the videos share the tokenizer of one encode worker, started by the group
    # job's own Snakemake (each video runs in a job step, and the cluster's proctrack/pgid kills
    # what a step leaves behind): one load per group job, the other videos reuse it
    video_logs = [p.read_text() for p in (work / "logs" / "encode_video").glob("*.log")]
    loads = [log for log in video_logs if "tokenizer loaded" in log]
    reuses = [log for log in video_logs if "tokenizer reused" in log]
    assert len(loads) + len(reuses) == len(video_logs) == 5
    group_ids = [j for j, n in jobs.items() if n not in ("encode_prompts", "train")]
    assert len(loads) == len({re.search(r"encode worker pid (\d+)", log).group(1) for log in video_logs}) == len(group_ids)
    assert all("the SLURM job's Snakemake started encode worker" in log for log in loads), loads
    worker_scopes = {re.search(r"-(slurm\d+)-", p.name).group(1) for p in (work / "logs" / "encode_workers").glob("*.log")}
    assert worker_scopes and worker_scopes <= {f"slurm{j}" for j in group_ids}, worker_scopes
    print(f"dataset through SLURM in {time.time() - t0:.0f}s: jobs {jobs}")


@pytest.mark.slurm
def test_demo_training_through_sbatch(slurm_run):
    work, prof_dir = slurm_run
    from cosmos_lib import sample_format

    if not (work / "results" / "dataset").is_dir() or not sample_format.complete_prefixes(work / "results" / "dataset"):
        pytest.skip("no dataset: the dataset run failed (see test_demo_dataset_through_sbatch)")
    before = set(_slurm_jobs_from_logs(work / "logs" / "slurm"))
    r = _run(work, prof_dir, "train")
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    summaries = list((work / "results" / "train").glob("*/summary.json"))
    assert summaries, "no training summary written"

    jobs = {j: n for j, n in _slurm_jobs_from_logs(work / "logs" / "slurm").items() if j not in before}
    assert "train" in jobs.values(), jobs
    assert "train_check" not in jobs.values()  # a local rule
    states = _sacct_completion(_run_uuid(r.stdout + r.stderr))
    train_id = next(j for j, n in jobs.items() if n == "train")
    assert states.get(train_id) == "COMPLETED", states
    # the launcher ran torchrun inside the SLURM job
    train_log = next((work / "logs" / "train").glob("*.log"))
    assert "torch.distributed.run" in train_log.read_text()


# --- the profiles as Snakemake reads them (no cluster needed) ----------------------------------------

def _parse_profile(path: Path) -> dict:
    from snakemake.profiles import ProfileConfigFileParser

    with open(path) as f:
        return dict(ProfileConfigFileParser().parse(f))


def test_slurm_profile_takes_account_partition_and_gpu_model_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLURM_ACCOUNT", "proj42")
    monkeypatch.setenv("SLURM_PARTITION", "gpu_h100")
    monkeypatch.setenv("SLURM_GPU_MODEL", "h100")
    args = _parse_profile(REPO / "profiles" / "slurm" / "profile.yaml")
    assert args["executor"] == "slurm"
    assert "slurm_account=proj42" in args["default-resources"]
    assert "slurm_partition=gpu_h100" in args["default-resources"]
    assert "encode_video:gpu_model=h100" in args["set-resources"]
    assert "encode_video:gpu=1" in args["set-resources"]
    assert "encode=16" in args["group-components"]
    assert "gpu=local" in args["set-resource-scopes"]
    # geometry of training comes from the config, never from the profile
    assert not [r for r in args["set-resources"] if r.startswith("train:")]


def test_slurm_profile_without_environment_leaves_account_and_partition_to_slurm(monkeypatch):
    for k in ("SLURM_ACCOUNT", "SLURM_PARTITION", "SLURM_GPU_MODEL"):
        monkeypatch.delenv(k, raising=False)
    args = _parse_profile(REPO / "profiles" / "slurm" / "profile.yaml")
    assert not [r for r in args["default-resources"] if r.startswith(("slurm_account", "slurm_partition"))]
    assert not [r for r in args["set-resources"] if "gpu_model" in r]


def test_default_profile_gpu_limit_follows_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    args = _parse_profile(REPO / "profiles" / "default" / "profile.yaml")
    assert args["cores"] == "all"
    assert "gpu=3" in args["resources"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "gpu=1" in _parse_profile(REPO / "profiles" / "default" / "profile.yaml")["resources"]


def test_slurm_profile_dry_run_puts_videos_in_one_gpu_group_job(tmp_path, monkeypatch):
    _copy_workflow(tmp_path)
    monkeypatch.setenv("SLURM_GPU_MODEL", "h100")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SBATCH_", "SRUN_"))}
    r = subprocess.run([*SNAKEMAKE, "-n", "all", "--workflow-profile", "profiles/slurm",
                        "--configfile", "config/demo.yaml"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    blocks = re.split(r"\n(?=\s*(?:localrule|rule) )", out)
    encode = [b for b in blocks if re.match(r"\s*rule encode_video:", b)]
    assert encode and all("gpu=1" in b and "gpu_model=h100" in b and "cpus_per_gpu=8" in b for b in encode)
    # the five demo videos make one group job (group-components encode: 16)
    assert out.count("Group job encode") == 1


_ALLREDUCE = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1])
dist.all_reduce(t)
with open(f"rank{os.environ['RANK']}.txt", "w") as f:
    print(int(t), os.environ["WORLD_SIZE"], os.environ.get("SLURMD_NODENAME"), file=f)
dist.destroy_process_group()
"""

_MULTINODE_SNAKEFILE = """
from cosmos_lib.launch import slurm_resources

rule train:
    output: "ranks.txt"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
        **slurm_resources(2, 2, "cpu"),
    shell:
        "python -m cosmos_lib.launch --nproc-per-node 2 --nnodes 2 --device cpu -- allreduce.py"
        " && cat rank0.txt rank1.txt rank2.txt rank3.txt > {output}"
"""


@pytest.mark.slurm
def test_multi_node_launch_through_snakemake_and_srun(tmp_path):
    """The multi-node training path, for real: a rule with slurm_resources(2 per node, 2 nodes)
    goes through the plugin (sbatch --nodes=2 --ntasks=2, the jobstep's mpi path), the launcher
    starts one srun task per node, and the two torchrun agents meet in a c10d rendezvous on the
    first node: 4 ranks on 2 SLURM nodes reduce 1+2+3+4."""
    deadline = time.time() + 30  # nodes of the previous test's jobs may still be completing
    while _idle_nodes() < 2 and time.time() < deadline:
        time.sleep(2)
    if _idle_nodes() < 2:
        pytest.skip("needs 2 idle SLURM nodes (.ci/slurm_cluster.sh starts 2 on one machine)")
    (tmp_path / "Snakefile").write_text(_MULTINODE_SNAKEFILE)
    (tmp_path / "allreduce.py").write_text(_ALLREDUCE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([*SNAKEMAKE, "--executor", "slurm", "--jobs", "1", "--workflow-profile", "none",
                        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
                        "--slurm-keep-successful-logs"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text() for p in (tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:] + logs[-3000:]
    ranks = [line.split() for line in (tmp_path / "ranks.txt").read_text().splitlines()]
    assert len(ranks) == 4 and all(rank[:2] == ["10", "4"] for rank in ranks), ranks
    assert len({rank[2] for rank in ranks}) == 2, f"ranks not on 2 SLURM nodes: {ranks}"
    assert "--rdzv_backend c10d" in logs and "srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in logs
    states = _sacct_completion(_run_uuid(r.stdout + r.stderr))
    assert list(states.values()) == ["COMPLETED"], states
