"""cosmos_lib.launch: SLURM hostlists, torchrun geometry, the GPU check, the CLI entry."""

import subprocess
import sys

import pytest

from cosmos_lib.launch import (
    GPUMismatchError,
    LaunchError,
    check_visible_gpus,
    expand_hostlist,
    main,
    plan,
    rendezvous_port,
    torchrun_args,
)


# --- hostlists ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "expr, hosts",
    [
        ("gpu5", ["gpu5"]),
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("a1,b2", ["a1", "b2"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("r[1-2]n[3,5]", ["r1n3", "r1n5", "r2n3", "r2n5"]),
        ("node[1-2]-ib", ["node1-ib", "node2-ib"]),
        ("x[7]", ["x7"]),
    ],
)
def test_expand_hostlist(expr, hosts):
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize("bad", ["", "node[01-03", "node01-03]", "n[3-1]", "n[a-b]", "n[[1]]"])
def test_expand_hostlist_rejects_bad_syntax(bad):
    with pytest.raises(LaunchError):
        expand_hostlist(bad)


def test_expand_hostlist_agrees_with_scontrol():
    """When scontrol is installed, our parser gives what SLURM itself gives."""
    expr = "node[01-03,07],gpu5,r[1-2]n[3,5]"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", expr], capture_output=True, text=True,
                             timeout=10)
    except FileNotFoundError:
        pytest.skip("scontrol not installed")
    if out.returncode != 0:
        pytest.skip(f"scontrol cannot run here: {out.stderr.strip()}")
    assert expand_hostlist(expr) == out.stdout.split()


# --- torchrun geometry ----------------------------------------------------------------------------

def test_single_node_is_standalone():
    assert torchrun_args(8, 1, env={}) == ["--standalone", "--nnodes", "1", "--nproc_per_node", "8"]
    # inside a SLURM job too: one node never needs a rendezvous endpoint
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu1"}
    assert torchrun_args(4, 1, env=env)[:1] == ["--standalone"]


def test_multi_node_under_slurm_uses_first_host_and_job_id():
    env = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "node[07-09]", "SLURM_STEP_ID": "0",
           "SLURM_STEP_NUM_TASKS": "3"}
    args = torchrun_args(8, 3, env=env)
    assert args == [
        "--nnodes", "3", "--nproc_per_node", "8", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"node07:{29500 + 456}", "--rdzv_id", "123456",
    ]


def test_multi_node_prefers_the_step_nodelist():
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n[1-4]", "SLURM_STEP_NODELIST": "n[3-4]"}
    args = torchrun_args(2, 2, env=env)
    assert args[args.index("--rdzv_endpoint") + 1] == "n3:29505"


def test_multi_node_node_count_must_match_the_allocation():
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]"}
    with pytest.raises(LaunchError, match=r"asked for 4 nodes .* runs on 2"):
        torchrun_args(8, 4, env=env)


def test_multi_node_needs_one_task_per_node():
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_STEP_ID": "0",
           "SLURM_STEP_NUM_TASKS": "16"}
    with pytest.raises(LaunchError, match="one task per node"):
        torchrun_args(8, 2, env=env)


def test_multi_node_outside_slurm_needs_master_addr():
    with pytest.raises(LaunchError, match="MASTER_ADDR"):
        torchrun_args(8, 2, env={})
    args = torchrun_args(8, 2, env={"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "12345"})
    assert args[args.index("--rdzv_endpoint") + 1] == "10.0.0.1:12345"


def test_bad_counts_and_ports():
    with pytest.raises(LaunchError):
        torchrun_args(0, 1, env={})
    with pytest.raises(LaunchError):
        torchrun_args(1, 0, env={})
    with pytest.raises(LaunchError, match="MASTER_PORT"):
        rendezvous_port({"MASTER_PORT": "http"})
    with pytest.raises(LaunchError, match="MASTER_PORT"):
        rendezvous_port({"MASTER_PORT": "70000"})
    assert rendezvous_port({}) == 29500


def test_plan_wraps_in_srun_from_a_batch_script_and_runs_torchrun_inside_the_step():
    program = ["-m", "cosmos_lib.train", "--config", "x.yaml"]
    batch_env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "g[1-2]"}
    cmd = plan(4, 2, "cpu", program, env=batch_env)
    assert cmd[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpu-bind=none",
                       "--kill-on-bad-exit=1"]
    assert cmd[7:10] == ["-m", "cosmos_lib.launch", "--nproc-per-node"]
    assert cmd[cmd.index("--") + 1:] == program

    step_env = dict(batch_env, SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="2")
    cmd = plan(4, 2, "cpu", program, env=step_env)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--rdzv_endpoint" in cmd and cmd[-4:] == program


def test_plan_checks_gpus_before_starting_on_cuda():
    with pytest.raises(GPUMismatchError):
        # this machine's torch sees no GPU (CPU build or no device), so asking for 2 must fail
        import torch

        if torch.cuda.device_count() == 2:
            pytest.skip("this machine really has 2 GPUs")
        plan(2, 1, "cuda", ["train.py"], env={})


# --- GPU check ------------------------------------------------------------------------------------

def test_gpu_check_passes_when_counts_agree_and_on_cpu():
    assert check_visible_gpus(4, env={}, device_count=4) == 4
    assert check_visible_gpus(0, env={}, device_count=0) == 0
    assert check_visible_gpus(0, env={}) == 0  # CPU run: torch is not even asked


def test_gpu_check_names_both_numbers_and_the_environment():
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_ID": "77"}
    with pytest.raises(GPUMismatchError) as e:
        check_visible_gpus(8, env=env, device_count=2)
    msg = str(e.value)
    assert "asked for 8 GPU" in msg and "sees 2" in msg
    assert "CUDA_VISIBLE_DEVICES='0,1'" in msg and "SLURM_GPUS_ON_NODE='2'" in msg


def test_gpu_check_with_no_gpu_says_so():
    with pytest.raises(GPUMismatchError, match="no GPU is visible") as e:
        check_visible_gpus(1, env={}, device_count=0)
    assert "CUDA_VISIBLE_DEVICES unset" in str(e.value)


def test_gpu_check_uses_torch_device_count_with_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert check_visible_gpus(3, env={}) == 3
    with pytest.raises(GPUMismatchError, match="sees 3"):
        check_visible_gpus(1, env={})


# --- the CLI entry --------------------------------------------------------------------------------

def test_main_dry_run_prints_the_torchrun_command(capsys, monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    rc = main(["--nproc-per-node", "2", "--device", "cpu", "--dry-run", "--", "-m", "mod", "--x", "1"])
    assert rc == 0
    out = capsys.readouterr().out.strip().split()
    assert out[1:3] == ["-m", "torch.distributed.run"]
    assert out[3:8] == ["--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    assert out[-4:] == ["-m", "mod", "--x", "1"]


def test_main_reports_errors_without_a_traceback(capsys, monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert main(["--nnodes", "2", "--device", "cpu", "--", "train.py"]) == 2
    assert "MASTER_ADDR" in capsys.readouterr().err
    assert main(["--device", "cpu"]) == 2  # no program
    assert main(["--device", "tpu", "--", "x.py"]) == 2


def test_torchrun_really_runs_two_cpu_processes(tmp_path):
    """End to end on CPU: the launcher execs torchrun, which starts 2 ranks that meet (gloo)."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = __import__('torch').tensor([dist.get_rank() + 1])\n"
        "dist.all_reduce(t)\n"
        f"open(r'{tmp_path}/rank' + os.environ['RANK'], 'w').write(str(int(t)) + ' ' + os.environ['WORLD_SIZE'])\n"
        "dist.destroy_process_group()\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    r = subprocess.run(
        [sys.executable, "-m", "cosmos_lib.launch", "--nproc-per-node", "2", "--device", "cpu", "--",
         str(script)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "rank0").read_text() == "3 2"
    assert (tmp_path / "rank1").read_text() == "3 2"


def test_plan_under_snakemake_jobstep_env_wraps_in_srun_and_step_needs_a_nodelist():
    """Snakemake's slurm-jobstep keeps only SLURM_JOB_ID (and a few ids) in the job's environment."""
    cmd = plan(8, 2, "cuda", ["-m", "cosmos_lib.train"], env={"SLURM_JOB_ID": "11"})
    assert cmd[0] == "srun" and "--nodes=2" in cmd
    with pytest.raises(LaunchError, match="no SLURM_STEP_NODELIST"):
        torchrun_args(8, 2, env={"SLURM_JOB_ID": "11", "SLURM_STEP_ID": "0"})


def test_two_node_c10d_rendezvous_really_meets(tmp_path):
    """The multi-node path for real: two launchers (two 'nodes' on this host, one process each)
    meet through the c10d rendezvous at MASTER_ADDR:MASTER_PORT and form one group of 2."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([dist.get_rank() + 1])\n"
        "dist.all_reduce(t)\n"
        f"open(r'{tmp_path}/rank' + os.environ['RANK'], 'w').write(f\"{{int(t)}} {{os.environ['WORLD_SIZE']}}\")\n"
        "dist.destroy_process_group()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RDZV_ID=f"test{port}")
    cmd = [sys.executable, "-m", "cosmos_lib.launch", "--nnodes", "2", "--nproc-per-node", "1",
           "--device", "cpu", "--", str(script)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-1500:] for o in outs)
    assert (tmp_path / "rank0").read_text() == "3 2"
    assert (tmp_path / "rank1").read_text() == "3 2"


# --- geometry -> sbatch, through the SLURM executor plugin's own code --------------------------------

class _Resources(dict):
    __getattr__ = dict.__getitem__


class _FakeJob:
    """What snakemake-executor-plugin-slurm reads from a job to build its sbatch call."""

    def __init__(self, resources, threads=4):
        self.resources = _Resources(resources)
        self.threads = threads
        self.name = "train"

    def is_group(self):
        return False


def _sbatch_flags(resources, threads=4):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = _FakeJob(resources, threads)
    params = {"run_uuid": "u", "slurm_logfile": "x.log", "comment_str": "rule_train", "account": "",
              "partition": "", "workdir": "/w"}
    return (get_submit_command(job, params) + set_gres_string(job)).split()


def test_single_node_gpu_geometry_becomes_gpus_and_one_node():
    from cosmos_lib.launch import slurm_resources

    res = slurm_resources(8, 1, "cuda", gpu_model="h100")
    flags = _sbatch_flags(dict(res, cpus_per_gpu=8, mem_mb=1000, runtime=60))
    assert "--gpus=h100:8" in flags and "--nodes=1" in flags and "--cpus-per-gpu=8" in flags
    assert not any(f.startswith(("--ntasks", "--gres")) for f in flags)


def test_multi_node_geometry_becomes_gres_per_node_and_one_task_per_node():
    from cosmos_lib.launch import slurm_resources

    res = slurm_resources(8, 4, "cuda")
    flags = _sbatch_flags(dict(res, mem_mb=1000, runtime=60))
    assert "--nodes=4" in flags and "--ntasks=4" in flags and "--gres=gpu:8" in flags
    assert not any(f.startswith(("--gpus", "--ntasks-per-gpu")) for f in flags)
    assert res["mpi"] == "srun"  # the jobstep then leaves the srun step to the launcher


def test_cpu_geometry_has_no_gpus():
    from cosmos_lib.launch import slurm_resources

    assert slurm_resources(1, 1, "cpu") == {"gpu": 0, "nodes": 1}
    flags = _sbatch_flags(dict(slurm_resources(1, 1, "cpu"), mem_mb=1000), threads=2)
    assert "--ntasks=1" in flags and "--cpus-per-task=2" in flags
    assert not any(f.startswith(("--gpus", "--gres")) for f in flags)
    with pytest.raises(LaunchError):
        slurm_resources(0, 1)
