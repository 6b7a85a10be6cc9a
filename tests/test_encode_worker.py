"""The encode worker: jobs (separate processes, as Snakemake starts them) share one tokenizer."""

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from cosmos_lib import sample_format as sf
from cosmos_lib.demo_videos import write_video
from cosmos_lib.hub import write_manifest
from cosmos_lib.preprocess import Cancelled, EncodeSettings, encode_video
from cosmos_lib.tiny_models import save_tiny_tokenizer_diffusers
from cosmos_lib.tokenizer import VideoTokenizer

REPO = Path(__file__).resolve().parent.parent
SETTINGS = EncodeSettings(num_frames=17, height=16, width=32, conditioning_frames=9, num_chunks=2, seed=3, batch_size=2)

# One encode job, as scripts/encode_video.py runs it: its own process, its own log.
JOB = textwrap.dedent(
    """
    import json, sys
    from cosmos_lib.encode_worker import WorkerSpec, encode_in_worker
    from cosmos_lib.logs import setup_job_logging
    args = json.loads(sys.argv[1])
    setup_job_logging(args["log"])
    encode_in_worker(WorkerSpec(**args["spec"]), args["job"], log_path=args["log"])
    print("torch imported" if "torch" in sys.modules else "no torch")
    """
)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run folder (the working directory) with a tiny tokenizer, T5 embeddings and two videos;
    TMPDIR short and private, so this test's workers and sockets are its own."""
    short_tmp = tempfile.mkdtemp(prefix="ew", dir="/tmp")
    monkeypatch.setenv("TMPDIR", short_tmp)
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.chdir(tmp_path)
    save_tiny_tokenizer_diffusers(tmp_path / "models" / "vae")
    write_manifest(tmp_path / "tokenizer.json", "tiny", "tokenizer", tmp_path / "models" / "vae")
    sf.atomic_torch_save(tmp_path / "t5.pth", torch.randn(512, 1024).to(torch.bfloat16))
    for i in range(2):
        write_video(tmp_path / f"v{i}.mp4", num_frames=30, width=48, height=32, seed=i)
    yield tmp_path
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # workers a failed test left behind
        try:
            if short_tmp.encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), 9)
        except OSError:
            pass


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def job_args(run: Path, name: str, video: str, idle_seconds: float = 30.0, manifest: str = "tokenizer.json",
             fail_on_bad_video: bool = False) -> dict:
    """What JOB gets: the worker spec, the job, the job's log."""
    return {
        "spec": {"tokenizer_manifest": manifest, "device": "cpu", "idle_seconds": idle_seconds, "log_dir": "logs/workers"},
        "job": {
            "video": str(run / video), "video_id": name, "out_dir": str(run / "samples" / name),
            "report": str(run / "reports" / f"{name}.json"), "t5_embeddings": str(run / "t5.pth"),
            "settings": SETTINGS.__dict__, "prompt_error": "", "fail_on_bad_video": fail_on_bad_video,
        },
        "log": str(run / "logs" / f"{name}.log"),
    }


def job(run: Path, name: str, video: str, **kwargs) -> tuple[dict, str]:
    """Run one encode job in a process of its own; its report and its log."""
    args = job_args(run, name, video, **kwargs)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", JOB, json.dumps(args)], cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no torch"  # the job process stays light: the worker holds torch
    return json.loads((run / "reports" / f"{name}.json").read_text()), (run / "logs" / f"{name}.log").read_text()


def worker_pid(job_log: str) -> int:
    return int(re.search(r"encode worker pid (\d+): tokenizer", job_log).group(1))


def test_jobs_share_one_tokenizer_load_and_give_the_samples_of_a_direct_encode(run):
    report_a, log_a = job(run, "a", "v0.mp4")
    report_b, log_b = job(run, "b", "v1.mp4")
    assert "tokenizer loaded" in log_a and "tokenizer loaded" not in log_b
    assert "tokenizer reused on cpu (video 2 of this worker)" in log_b
    assert worker_pid(log_a) == worker_pid(log_b)
    assert "v1.mp4: 2/2 chunks done" in log_b  # the worker's lines land in the job's own log
    assert report_b["status"] == "ok" and len(report_b["samples"]) == 2

    # the same samples as a job with a tokenizer of its own, on as many threads as the worker
    # (its spec's 1: another thread count changes the order of float sums in the convolutions)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = VideoTokenizer.load(run / "models" / "vae", device="cpu")
        direct = encode_video(run / "v1.mp4", "b", out_dir=run / "direct", tokenizer=tokenizer,
                              t5_embeddings=sf.load_tensor(run / "t5.pth"), settings=SETTINGS)
    finally:
        torch.set_num_threads(threads)
    assert direct["samples"] == report_b["samples"]
    for prefix in direct["samples"]:
        for suffix in ("video_latent", "conditioning_latent"):
            ours = sf.load_tensor(run / "samples" / "b" / f"{prefix}.{suffix}.pth")
            assert torch.equal(ours, sf.load_tensor(run / "direct" / f"{prefix}.{suffix}.pth"))


def step_job(run: Path, name: str, video: str) -> tuple[dict, str]:
    """An encode job as a SLURM group job runs it: in a job step, whose leftover processes SLURM
    kills when the step ends (proctrack/cgroup or pgid; here: the step's process group)."""
    args = job_args(run, name, video)
    step = subprocess.Popen([sys.executable, "-c", JOB, json.dumps(args)], cwd=run, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), SLURM_STEP_ID="0"))
    assert step.wait(timeout=300) == 0
    try:
        os.killpg(step.pid, 9)  # the step ends: what it left behind dies
    except ProcessLookupError:
        pass
    time.sleep(0.5)
    return json.loads((run / "reports" / f"{name}.json").read_text()), (run / "logs" / f"{name}.log").read_text()


def test_in_a_slurm_job_the_worker_outlives_the_job_step_that_started_it(run, monkeypatch):
    from cosmos_lib.encode_worker import offer_spawner

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    # without the spawner of the job's own Snakemake, each step's worker dies with the step
    _, log_a = step_job(run, "a", "v0.mp4")
    assert "tokenizer loaded" in log_a and not alive(worker_pid(log_a))

    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert offer_spawner() is None  # the Snakemake of a job step offers none: its children die with it
    monkeypatch.delenv("SLURM_STEP_ID")
    listener = offer_spawner()  # what rules/common.smk does in the SLURM job's (batch script's) Snakemake
    assert listener is not None
    try:
        _, log_b = step_job(run, "b", "v0.mp4")
        report_c, log_c = step_job(run, "c", "v1.mp4")
        assert "the SLURM job's Snakemake started encode worker" in log_b and "tokenizer loaded" in log_b
        assert "tokenizer reused" in log_c and worker_pid(log_c) == worker_pid(log_b)
        assert report_c["status"] == "ok" and len(report_c["samples"]) == 2
        ppid = int(Path(f"/proc/{worker_pid(log_b)}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid == os.getpid()  # a child of the batch step's process, not of a job step
    finally:
        listener.shutdown(2)
        listener.close()


def test_a_bad_video_is_reported_and_the_worker_serves_the_next_job(run):
    (run / "broken.mp4").write_bytes(b"not a video at all")
    report, log_bad = job(run, "bad", "broken.mp4")
    assert report["status"] == "failed" and "broken.mp4" in report["reason"] and not report["samples"]
    with pytest.raises(AssertionError, match="BadVideoFailure: .*broken.mp4: not a readable video"):
        job(run, "bad2", "broken.mp4", fail_on_bad_video=True)
    assert not (run / "reports" / "bad2.json").exists()
    _, log_next = job(run, "next", "v0.mp4")
    assert worker_pid(log_next) == worker_pid(log_bad)


def test_an_idle_worker_exits_and_the_next_job_starts_another(run):
    _, log_a = job(run, "a", "v0.mp4", idle_seconds=1)
    first = worker_pid(log_a)
    assert wait_gone(first)
    worker_logs = "".join(p.read_text() for p in (run / "logs" / "workers").glob("*.log"))
    assert f"encode worker pid {first} exits after 1 video(s)" in worker_logs
    _, log_b = job(run, "b", "v1.mp4", idle_seconds=1)
    assert "tokenizer loaded" in log_b and worker_pid(log_b) != first


def test_a_worker_that_cannot_load_the_model_fails_the_job_with_the_reason(run):
    write_manifest(run / "gone.json", "tiny", "tokenizer", run / "models" / "missing")
    with pytest.raises(AssertionError, match="models/missing"):
        job(run, "a", "v0.mp4", manifest="gone.json")
    assert not list((Path(os.environ["TMPDIR"])).rglob("*.sock"))  # the failed worker is gone


def test_stop_workers_ends_the_runs_idle_workers(run):
    from cosmos_lib.encode_worker import stop_workers

    _, log_a = job(run, "a", "v0.mp4", idle_seconds=300)
    pid = worker_pid(log_a)
    assert alive(pid)
    assert stop_workers() == 1
    assert wait_gone(pid)
    assert stop_workers() == 0


def test_cancel_stops_an_encoding_between_batches(run):
    tokenizer = VideoTokenizer.load(run / "models" / "vae", device="cpu")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="v0.mp4"):
        encode_video(run / "v0.mp4", "a", out_dir=run / "out", tokenizer=tokenizer,
                     t5_embeddings=sf.load_tensor(run / "t5.pth"), settings=SETTINGS, cancel=cancel)
    assert not list((run / "out").glob("*.pth"))
