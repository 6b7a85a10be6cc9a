"""The train/export rules: lint-clean and wired to the dataset (dry run of the demo config)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _snakemake(*args, cwd):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_dry_run_train_and_export(tmp_path):
    res = _snakemake("--configfile", str(ROOT / "config" / "demo.yaml"), "--cores", "2", "-n", "export",
                     "--directory", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for rule in ("train_check", "train", "export", "dataset"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule
    assert "results/train/demo/summary.json" in out
    assert "results/train/demo/export/transformer" in out
    assert "download_model" not in out.split("rule train:")[1].split("\n\n")[0]  # tiny: nothing to download


def test_lint_has_nothing_on_train_rules(tmp_path):
    res = _snakemake("--lint", cwd=ROOT)
    text = res.stdout + res.stderr
    for rule in ("train_check", "train", "export"):
        assert f"Lints for rule {rule} " not in text, text[-3000:]


def test_multi_node_geometry_and_init_from_in_the_plan(tmp_path):
    """The train job's resources come from cosmos_lib.launch.slurm_resources (two nodes: nodes,
    one task per node, GPUs per node as gres); init_from is an input and replaces the download."""
    import yaml

    nemo = tmp_path / "Cosmos-1.0-Diffusion-7B-Text2World" / "nemo"
    nemo.mkdir(parents=True)
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"train": {
        "model": "nvidia/Cosmos-1.0-Diffusion-7B-Text2World", "init_from": str(nemo.parent), "device": "cuda",
        "nproc_per_node": 8, "nnodes": 2, "global_batch_size": 16, "resources": {"gpu_model": "h100"}}}))
    res = _snakemake("--configfile", str(ROOT / "config" / "demo.yaml"), str(extra), "--cores", "2", "-n", "train",
                     "--directory", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    job = res.stdout.split("rule train:")[1].split("\n\n")[0]
    resources = job.split("resources:")[1].splitlines()[0]
    for item in ("nodes=2", "tasks=2", "tasks_per_gpu=0", "mpi=srun", "gres=gpu:h100:8", "gpu=0", "mem_mb=4000",
                 "runtime=30"):
        assert item in resources.replace(" ", "").split(","), (item, resources)
    assert str(nemo.parent) in job.split("input:")[1].splitlines()[0]
    assert "models/diffusion_model.json" not in res.stdout  # init_from: the model repo is not downloaded
