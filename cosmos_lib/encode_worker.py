"""The video tokenizer loaded once per machine slot, shared by the encode jobs that run there.

Snakemake runs one job per video (so a new video redoes only its own work), and each job is its
own process. Loading the tokenizer in each of them costs seconds per video, and with
``encode.compile`` a compile of about a minute. Instead, the first encode job on a slot (a GPU,
or a CPU slot) starts an *encode worker*: a process that loads the tokenizer once and encodes
the videos that jobs send it over a UNIX socket, one at a time. The jobs of a SLURM group job
(16 videos in one submission) or of a local run then share one tokenizer per GPU.

- A job holds its slot (a flock) while the worker encodes its video, so a worker never serves two
  jobs at once and two jobs never share a GPU by accident. A worker belongs to one run: its
  socket is named from the working directory, the SLURM job, the device, the tokenizer manifest
  and this package's code, so a changed model or changed code gets a new worker.
- The worker writes the job's log lines into the job's own log file; its own messages (start,
  exit, a crash) go to ``<log_dir>/<host>-<scope>-<slot>.log``.
- In a SLURM job each Snakemake job runs in a job step of its own (``srun``), and SLURM kills what
  a step leaves behind when it ends (``proctrack/cgroup``, ``proctrack/pgid``). So there the
  worker is started by the SLURM job's own Snakemake, in the batch step that lasts as long as the
  job: that process offers a *spawner* socket (``offer_spawner``, called from rules/common.smk),
  and a job that finds no worker asks it to start one.
- It exits when no job has come for ``idle_seconds``, after an unexpected error (a CUDA error can
  leave the device unusable: the next job starts a fresh worker), and with its job when SLURM or
  a Ctrl-C ends that. A job whose worker dies fails with the worker's last log lines.
- A job that goes away (killed, cancelled) stops the encoding of its video at the next batch.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("cosmos_lib.encode_worker")

#: seconds a job waits for a worker it started to accept connections (importing torch included)
STARTUP_TIMEOUT_S = 300.0
#: lines of the worker's own log quoted in the error of a job whose worker died
LOG_TAIL_LINES = 30


class WorkerError(RuntimeError):
    """The encode worker could not start, or died, or failed on something other than the video."""


class BadVideoFailure(RuntimeError):
    """A video gave no samples and ``fail_on_bad_video`` is set: the message names it and why."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker loads: the same spec (in the same run) means the same worker can serve."""

    tokenizer_manifest: str
    device: str  # "auto", "cuda" or "cpu"
    compile: bool = False
    threads: int = 1
    idle_seconds: float = 60.0
    log_dir: str = "logs/encode_workers"


# --- the job's side (no torch import here: a job starts in a fraction of a second) ----------------
def encode_in_worker(spec: WorkerSpec, job: dict, log_path: str | None) -> None:
    """Have this slot's worker (started here if there is none) do ``preprocess.encode_job(job)``.

    The worker writes the job's samples, report and log lines. Raises BadVideoFailure for a bad
    video when the job says to fail on one, WorkerError when the worker fails otherwise.
    """
    device, slot = claim_slot(spec)
    address = socket_path(spec, device, slot)
    worker_log = Path(spec.log_dir) / f"{socket.gethostname()}-{run_scope()}-{slot}.log"
    conn = connect_or_start(address, spec, device, worker_log)
    with conn:
        conn.sendall(json.dumps({"job": job, "log_path": str(log_path) if log_path else None}).encode() + b"\n")
        reply = _read_line(conn)
    if reply is None:
        raise WorkerError(f"{job['video']}: the encode worker ({address}) exited while encoding it; "
                          f"its log {worker_log} ends with:\n{tail(worker_log)}")
    reply = json.loads(reply)
    if reply["status"] == "bad_video":
        raise BadVideoFailure(reply["message"])
    if reply["status"] != "ok":
        raise WorkerError(f"{job['video']}: the encode worker failed: {reply['message']}\n{reply.get('traceback', '')}")


# --- slots: which job may use which GPU (or CPU worker) on this machine ---------------------------
def visible_gpus() -> int:
    """GPUs a job here sees, without importing torch: CUDA_VISIBLE_DEVICES when set (SLURM sets
    it), else the NVIDIA device nodes. (profiles/default counts the same way.)"""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)])


_held_locks: list = []  # open lock files: a claim lasts as long as the process


def _try_lock(path: Path) -> bool:
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    _held_locks.append(handle)
    return True


def claim_gpu(count: int, lock_dir: str | Path | None = None, poll_s: float = 1.0) -> int:
    """Index of a GPU that no other process of this user has claimed (flock on a file per GPU);
    waits while all are taken. Used by jobs that Snakemake starts side by side on one machine
    (it never sets CUDA_VISIBLE_DEVICES)."""
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / f"cosmos_gpu_locks_{os.getuid()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(count):
            if _try_lock(lock_dir / f"gpu{index}.lock"):
                log.info("claimed GPU %d of %d", index, count)
                return index
        time.sleep(poll_s)


def claim_slot(spec: WorkerSpec) -> tuple[str, str]:
    """(device, slot name) this job may use until it exits.

    Several GPUs visible (a workstation): a GPU no other job of this user holds (``claim_gpu``).
    One device: the first free numbered slot, so jobs that a profile lets run side by side
    (``device: cpu`` on many cores) each get a worker. "auto" and "cuda" are checked by the worker.
    """
    gpus = visible_gpus() if spec.device != "cpu" else 0
    if gpus > 1:
        index = claim_gpu(gpus)
        return f"cuda:{index}", f"gpu{index}"
    prefix = spec_key(spec, spec.device)
    slot = 0
    while not _try_lock(run_dir() / f"{prefix}-slot{slot}.lock"):
        slot += 1
    return spec.device, f"{spec.device}{slot}"


def run_scope() -> str:
    """The unit that owns workers: the SLURM job when there is one, else this machine."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm{job}" if job else "local"


def run_dir() -> Path:
    """Where this run's workers have their sockets and slot locks: one folder per run (the working
    directory, the SLURM job), under a short temporary path (a socket path holds 107 bytes)."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) > 40:
        base = Path("/tmp")
    run = hashlib.sha256(f"{run_scope()}\n{os.getcwd()}".encode()).hexdigest()[:12]
    path = base / f"cosmos_encode_{os.getuid()}" / run
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def spec_key(spec: WorkerSpec, device: str) -> str:
    """A short name for (tokenizer, device, options, code): what one worker of this run serves."""
    manifest = Path(spec.tokenizer_manifest)
    package = Path(__file__).parent
    code = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in package.rglob("*.py"))
    facts = {
        "device": device, "compile": spec.compile, "threads": spec.threads, "python": sys.executable,
        "manifest": str(manifest.resolve()), "manifest_text": manifest.read_text(encoding="utf-8"), "code": code,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def socket_path(spec: WorkerSpec, device: str, slot: str) -> str:
    return str(run_dir() / f"{spec_key(spec, device)}-{slot}.sock")


def stop_workers(timeout_s: float = 5.0) -> int:
    """Ask this run's idle workers to exit (the workflow does at its end); how many did."""
    stopped = 0
    for address in sorted(run_dir().glob("*.sock")):
        conn = _try_connect(str(address))
        if conn is None:  # a dead worker's socket
            address.unlink(missing_ok=True)
            continue
        with conn:
            conn.settimeout(timeout_s)
            try:
                conn.sendall(json.dumps({"command": "exit"}).encode() + b"\n")
                stopped += _read_line(conn) is not None
            except OSError:  # busy (another run's job?) or gone: its idle timeout ends it
                pass
    return stopped


def connect_or_start(address: str, spec: WorkerSpec, device: str, worker_log: Path) -> socket.socket:
    conn = _try_connect(address)
    if conn is not None:
        log.info("encoding in the running encode worker %s", address)
        return conn
    worker_log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "cosmos_lib.encode_worker", "--socket", address, "--tokenizer-manifest",
        spec.tokenizer_manifest, "--device", device, "--threads", str(spec.threads), "--idle-seconds", str(spec.idle_seconds),
    ] + (["--compile"] if spec.compile else [])
    env = worker_environment(dict(os.environ))
    pid = request_spawn(command, env, worker_log)
    if pid is not None:
        log.info("the SLURM job's Snakemake started encode worker pid %d on %s (its log: %s)", pid, device, worker_log)
        exited = lambda: not _alive(pid)  # noqa: E731 - not our child: its exit code is the spawner's
    else:
        # same process group as the job: a Ctrl-C or a SLURM job end reaches the worker too
        worker = _start_worker_process(command, env, worker_log)
        pid, exited = worker.pid, lambda: worker.poll() is not None
        log.info("started encode worker pid %d on %s (its log: %s)", pid, device, worker_log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = _try_connect(address)
        if conn is not None:
            return conn
        if exited():
            raise WorkerError(f"the encode worker (pid {pid}) exited at start; its log {worker_log} ends with:\n{tail(worker_log)}")
        time.sleep(0.05)
    _kill(pid)
    raise WorkerError(f"the encode worker did not listen on {address} within {STARTUP_TIMEOUT_S:.0f} s; see {worker_log}")


def _start_worker_process(command: list[str], env: dict, worker_log: str | Path) -> subprocess.Popen:
    """Start an encode worker process, its output appended to its log (the job's or the spawner's)."""
    with open(worker_log, "a", encoding="utf-8") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)


def worker_environment(env: dict) -> dict:
    """The job's environment, with this checkout's cosmos_lib first on the path."""
    package_root = str(Path(__file__).resolve().parent.parent)
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")])))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except OSError:
        pass


# --- the spawner: workers that outlive a SLURM job step -----------------------------------------
SPAWNER_SOCKET = "spawner.sock"
_spawned: list[subprocess.Popen] = []


def offer_spawner() -> socket.socket | None:
    """In the Snakemake that runs a SLURM job's script (the batch step, which lasts as long as the
    job), serve the requests of that job's encode jobs to start an encode worker from here, in a
    background thread. The jobs themselves run in job steps (``srun``) whose leftover processes
    SLURM kills when the step ends, so a worker started by one of them would not serve the next.
    Called by every remote-mode Snakemake (rules/common.smk); does nothing outside a SLURM job or
    inside a job step (srun sets SLURM_STEP_ID there; a batch script has none). The listening
    socket when it serves."""
    if not os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_STEP_ID", "batch") != "batch":
        return None
    address = run_dir() / SPAWNER_SOCKET
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address.unlink(missing_ok=True)  # one per SLURM job and working directory: an earlier one's
    listener.bind(str(address))
    listener.listen(16)
    threading.Thread(target=_serve_spawn_requests, args=(listener,), name="encode-worker-spawner", daemon=True).start()
    import atexit

    atexit.register(_end_spawned, address)  # this job's Snakemake is done: its workers are too
    return listener


def request_spawn(command: list[str], env: dict, worker_log: Path) -> int | None:
    """Have this SLURM job's spawner start ``command``; its pid, or None when there is no spawner
    (a local run, or a SLURM job run by something other than this workflow's Snakemake)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    conn = _try_connect(str(run_dir() / SPAWNER_SOCKET))
    if conn is None:
        return None
    with conn:
        conn.sendall(json.dumps({"command": command, "env": env, "log": str(Path(worker_log).resolve())}).encode() + b"\n")
        reply = _read_line(conn)
    if reply is None:
        return None
    reply = json.loads(reply)
    if "pid" not in reply:
        raise WorkerError(f"the SLURM job's Snakemake could not start the encode worker: {reply.get('error')}")
    return int(reply["pid"])


def _serve_spawn_requests(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed at exit
            return
        with conn:
            try:
                request = json.loads(_read_line(conn) or b"{}")
                command = request["command"]
                if command[1:3] != ["-m", "cosmos_lib.encode_worker"]:  # starts encode workers, nothing else
                    raise ValueError(f"not an encode worker command: {command[:3]}")
                worker = _start_worker_process(command, request["env"], request["log"])
                _spawned.append(worker)
                threading.Thread(target=worker.wait, daemon=True).start()  # reaped when it exits
                reply = {"pid": worker.pid}
            except Exception as exc:  # noqa: BLE001 - the job reports it
                reply = {"error": f"{exc.__class__.__name__}: {exc}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass


def _end_spawned(address: Path) -> None:
    address.unlink(missing_ok=True)
    for worker in _spawned:
        if worker.poll() is None:
            worker.terminate()


def _try_connect(address: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn


def _read_line(conn: socket.socket) -> bytes | None:
    """One newline-terminated message, or None if the other side closed before sending it."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(True)[-lines:])
    except OSError as exc:
        return f"(cannot read it: {exc})"


# --- the worker's side -----------------------------------------------------------------------
class Worker:
    """Holds the tokenizer; encodes one requested video at a time."""

    def __init__(self, tokenizer_manifest: str, device: str, compile: bool):
        self.door: Door | None = None  # set by serve()
        self.tokenizer_manifest, self.device, self.compile = tokenizer_manifest, device, compile
        self.tokenizer = None
        self.videos = 0

    def handle(self, conn: socket.socket) -> bool:
        """Serve one connection; False when the worker must not serve another (after an error)."""
        from .preprocess import BadVideo, Cancelled

        raw = _read_line(conn)
        if raw is None:  # a job that connected and went away
            return True
        request = json.loads(raw)
        if request.get("command") == "exit":
            self.door.close()
            conn.sendall(b'{"status": "ok"}\n')
            return False
        video = request["job"]["video"]
        job_log = _job_log_handler(request.get("log_path"))
        cancel = threading.Event()
        watcher = threading.Thread(target=_watch_for_hangup, args=(conn, cancel), daemon=True)
        watcher.start()
        keep_serving = True
        try:
            self.encode(request["job"], cancel)
            reply = {"status": "ok"}
        except BadVideo as exc:
            reply = {"status": "bad_video", "message": str(exc)}
        except Cancelled:
            log.warning("%s: the job went away; stopped encoding", video)
            reply = None
        except Exception as exc:  # noqa: BLE001 - reported to the job, then this worker exits
            log.exception("%s: failed", video)
            reply = {"status": "error", "message": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc()}
            keep_serving = False
            self.door.close()  # before the reply: the next job must start a fresh worker
        finally:
            if job_log is not None:
                logging.getLogger().removeHandler(job_log)
                job_log.close()
        try:
            if reply is not None:
                conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            log.warning("%s: the job went away before its reply", video)
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the watcher
            except OSError:
                pass
            watcher.join()
        return keep_serving

    def encode(self, job: dict, cancel: threading.Event) -> None:
        from .hub import read_manifest
        from .preprocess import encode_job, resolve_device
        from .tokenizer import VideoTokenizer

        if self.tokenizer is None:
            start = time.perf_counter()
            device = resolve_device(self.device)
            self.tokenizer = VideoTokenizer.load(read_manifest(self.tokenizer_manifest), device=device, compile=self.compile)
            log.info("encode worker pid %d: tokenizer loaded on %s in %.1f s", os.getpid(), device, time.perf_counter() - start)
        else:
            log.info("encode worker pid %d: tokenizer reused on %s (video %d of this worker)",
                     os.getpid(), self.tokenizer.device, self.videos + 1)
        self.videos += 1
        encode_job(job, self.tokenizer, cancel)


def _job_log_handler(path: str | None) -> logging.Handler | None:
    if not path:
        return None
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _watch_for_hangup(conn: socket.socket, cancel: threading.Event) -> None:
    """The job sends nothing after its request: anything else on the socket means it went away."""
    try:
        conn.recv(1)
    except OSError:
        pass
    cancel.set()


def serve(address: str, worker: Worker, idle_seconds: float) -> None:
    """Accept jobs on ``address`` until none has come for ``idle_seconds`` (or an error)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(address)  # a dead worker's socket; only the holder of the slot gets here
    except FileNotFoundError:
        pass
    listener.bind(address)
    worker.door = Door(address)
    listener.listen(16)
    listener.settimeout(idle_seconds)
    log.info("encode worker pid %d listening on %s (exits after %.0f s without a job)", os.getpid(), address, idle_seconds)
    keep_serving = True
    try:
        while keep_serving:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                break
            with conn:
                conn.settimeout(None)
                keep_serving = worker.handle(conn)
    finally:
        # No new job can reach a worker whose socket file is gone; a job that connected just
        # before is still served (an idle exit must not drop it).
        worker.door.close()
        listener.setblocking(False)
        while keep_serving:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, OSError):
                break
            with conn:
                conn.setblocking(True)
                keep_serving = worker.handle(conn)
        listener.close()
    log.info("encode worker pid %d exits after %d video(s)", os.getpid(), worker.videos)


class Door:
    """The worker's socket file. Closing it removes the file only while it is still this
    worker's: once it is gone, the next job may start a new worker at the same path."""

    def __init__(self, address: str):
        self.address, self.inode = address, os.stat(address).st_ino

    def close(self) -> None:
        try:
            if os.stat(self.address).st_ino == self.inode:
                os.unlink(self.address)
        except FileNotFoundError:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--tokenizer-manifest", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(max(1, args.threads))
    serve(args.socket, Worker(args.tokenizer_manifest, args.device, args.compile), args.idle_seconds)


if __name__ == "__main__":
    main()
