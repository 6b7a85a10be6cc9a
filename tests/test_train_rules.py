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
