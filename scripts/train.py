"""Snakemake script of rules train_check and train (cosmos_lib.train; docs/training.md).

train_check: check the sample folder against the model, in this process.
train: start ``python -m cosmos_lib.launch`` (torchrun for this node/job geometry) with the same
Python that runs this script, so the job needs no ``python`` on PATH; its output goes to the log.
"""

import json
import os
import subprocess
import sys

sm = snakemake  # noqa: F821 - provided by Snakemake
# the subprocesses import cosmos_lib from this checkout, also inside a per-rule conda env
repo = os.path.dirname(os.path.realpath(sm.scriptdir))
env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
train = sm.params.train
common = ["--config-json", json.dumps(train), "--dataset-manifest", sm.input.dataset]
if sm.input.model:
    common += ["--model-manifest", sm.input.model[0]]

if sm.rule == "train_check":
    with open(sm.log[0], "w") as log:
        result = subprocess.run([sys.executable, "-m", "cosmos_lib.train", "check", *common],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    if result.returncode:
        sys.exit(f"dataset check failed (see {sm.log[0]})")
    with open(sm.output[0], "w") as out:
        out.write(result.stdout)
else:
    cmd = [sys.executable, "-m", "cosmos_lib.launch", "--nproc-per-node", str(train["nproc_per_node"]),
           "--nnodes", str(train["nnodes"]), "--device", train["device"], "--",
           "-m", "cosmos_lib.train", "run", *common, "--run-dir", sm.params.run_dir]
    with open(sm.log[0], "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        sys.exit(f"training failed with exit code {code} (see {sm.log[0]})")
