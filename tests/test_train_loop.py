"""End to end on CPU: overfitting, data parallel == single process, kill + resume, checkpoints
read by megatron-core and by us, export to diffusers. Tiny model, small latents, gloo."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cosmos_lib import sample_format as sf
from cosmos_lib.train import checkpoint
from cosmos_lib.train.config import TrainConfig
from cosmos_lib.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 3, 4, 4)
BASE = {"model": "tiny", "num_workers": 0, "lr": 3e-3, "warmup_steps": 2, "activation_checkpointing": False,
        "seed": 5, "device": "cpu"}


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _write(folder, prefix, latent, fps=24.0, seed=0):
    sf.write_sample(folder, prefix,
                    info=sf.make_info(height=32, width=32, fps=fps, num_frames=17, video_path="v.mp4", start_frame=0),
                    video_latent=latent, conditioning_latent=latent,
                    t5_embeddings=torch.randn(512, 1024, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dataset")
    for i in range(5):
        g = torch.Generator().manual_seed(100 + i)
        _write(folder, f"vid{i}_c0000", torch.randn(SHAPE, generator=g), seed=i)
    return folder


def _losses(run_dir):
    """step -> loss, the last record of each step (a killed attempt may have logged it too)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def _run(cfg, dataset, run_dir, **kw):
    """Train in this process, on one thread like the `_cli` runs (OMP_NUM_THREADS=1): a run resumed
    here from a CLI run's checkpoint sums floats in the same order as a reference run here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig.from_dict({**BASE, **cfg}), dataset=dataset, run_dir=run_dir, **kw)
    finally:
        torch.set_num_threads(threads)


def _cli(cfg, dataset, run_dir, nproc=None, extra=()):
    args = ["-m", "cosmos_lib.train", "run", "--config-json", json.dumps({**BASE, **cfg}),
            "--dataset", str(dataset), "--run-dir", str(run_dir), *extra]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    return subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_tiny_model_overfits_one_sample(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    c, t, h, w = torch.meshgrid(*(torch.arange(float(n)) for n in SHAPE), indexing="ij")
    _write(folder, "only_c0000", torch.sin(0.7 * c + 0.4 * t + 0.9 * h + 0.6 * w))
    _run({"max_steps": 100, "global_batch_size": 8, "micro_batch_size": 8, "save_every": 1000}, folder, tmp_path / "run")
    losses = [v for _, v in sorted(_losses(tmp_path / "run").items())]
    first, last = sum(losses[:3]) / 3, sum(losses[-10:]) / 10
    assert last < first / 3, (first, last)


def test_two_gloo_ranks_match_one_process(dataset, tmp_path):
    cfg = {"max_steps": 4, "global_batch_size": 4, "save_every": 4}
    _run({**cfg, "micro_batch_size": 2}, dataset, tmp_path / "one")  # 1 rank: 2 micro-batches of 2
    res = _cli({**cfg, "micro_batch_size": 1}, dataset, tmp_path / "two", nproc=2)  # 2 ranks x 2 x 1
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-6)
    assert len(set(round(v, 6) for v in one.values())) == 4  # the steps really differ
    # and the trained weights agree
    a, b = _load_ours(tmp_path / "one" / "checkpoints" / "step=4"), _load_ours(tmp_path / "two" / "checkpoints" / "step=4")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # two ranks wrote two shard files, nothing was gathered
    assert len(list((tmp_path / "two" / "checkpoints" / "step=4" / "weights").glob("*.distcp"))) == 2


def _load_ours(path):
    from cosmos_lib.train.model import build_model

    model = build_model(checkpoint.read_model_config(path))
    checkpoint.load_full_model_state(path, model)
    return model.state_dict()


def test_kill_and_resume_gives_the_same_losses(dataset, tmp_path):
    cfg = {"max_steps": 5, "global_batch_size": 2, "micro_batch_size": 1, "save_every": 2}
    _run(cfg, dataset, tmp_path / "ref")
    ref = _losses(tmp_path / "ref")

    killed = tmp_path / "killed"
    res = _cli(cfg, dataset, killed, extra=["--stop-after", "3"])  # dies right after step 3, no cleanup
    assert res.returncode == 3, res.stderr[-3000:]
    assert checkpoint.latest_complete(killed).name == "step=2"
    assert not (killed / "summary.json").exists()
    # a checkpoint that a kill interrupted (no COMPLETE marker) is never resumed from
    broken = checkpoint.step_dir(killed, 3)
    (broken / "weights").mkdir(parents=True)
    assert checkpoint.latest_complete(killed).name == "step=2"

    summary = _run(cfg, dataset, killed)
    resumed = _losses(killed)
    for step in (3, 4, 5):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5), step
    assert summary["step"] == 5 and Path(summary["checkpoint"]).name == "step=5"
    assert json.loads((killed / "summary.json").read_text())["step"] == 5
    a, b = _load_ours(tmp_path / "ref" / "checkpoints" / "step=5"), _load_ours(killed / "checkpoints" / "step=5")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    # nothing left to do: a re-run returns at once, with the same checkpoint
    again = _run(cfg, dataset, killed)
    assert again["step"] == 5 and _losses(killed) == resumed and not again["dataset_changed_on_resume"]

    # videos added later: more steps continue the run from its checkpoint over the new sample set
    _write(dataset, "added_c0000", torch.randn(SHAPE), seed=9)
    try:
        more = _run({**cfg, "max_steps": 6}, dataset, killed)
    finally:
        (dataset / "added_c0000.info.json").unlink()
        for suffix in sf.TENSOR_SUFFIXES:
            (dataset / f"added_c0000.{suffix}").unlink()
    assert more["dataset_changed_on_resume"] and more["samples"] == 6 and more["step"] == 6
    assert sorted(_losses(killed)) == [1, 2, 3, 4, 5, 6]


MEGATRON_READ = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    if __name__ == "__main__":
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=0, world_size=1)
        meta = dist_checkpointing.load_tensors_metadata(sys.argv[1])
        loaded = dist_checkpointing.load(meta, sys.argv[1])
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        torch.save(tensors, sys.argv[3])
        print(json.dumps({"common": {k: v for k, v in loaded.items() if not isinstance(v, torch.Tensor)}}))
        dist.destroy_process_group()
""")


def test_checkpoint_layout_megatron_load_and_export(dataset, tmp_path):
    _run({"max_steps": 2, "global_batch_size": 2, "save_every": 1, "task": "video2world", "micro_batch_size": 2},
         dataset, tmp_path / "run")
    ckpt = checkpoint.latest_complete(tmp_path / "run")
    assert ckpt.name == "step=2" and (ckpt / "COMPLETE").is_file()
    assert json.loads((ckpt / "weights" / "metadata.json").read_text()) == {
        "sharded_backend": "torch_dist", "sharded_backend_version": 1,
        "common_backend": "torch", "common_backend_version": 1}
    assert (ckpt / "weights" / "common.pt").is_file()
    assert checkpoint.read_model_config(ckpt)["in_channels"] == 17
    ours = _load_ours(ckpt)

    script = tmp_path / "read_megatron.py"
    script.write_text(MEGATRON_READ)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([sys.executable, str(script), str(ckpt / "weights"), str(port), str(tmp_path / "mc.pt")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    common = json.loads(res.stdout.strip().splitlines()[-1])["common"]
    assert common["step"] == 2 and common["key_names"] == "nemo"
    megatron = torch.load(tmp_path / "mc.pt", weights_only=True)
    # the keys megatron-core sees are NeMo's DiT names: stacked decoder layers, fused qkv / kv, fused AdaLN
    assert all(k.startswith("module.") for k in megatron), sorted(megatron)[:5]
    hidden, hd = 64, 32  # tiny: 2 heads x 32
    qkv = megatron["module.decoder.layers.full_self_attention.linear_qkv.weight"]
    assert qkv.shape == (2, 3 * hidden, hidden)  # (layers, [q_h, k_h, v_h] per head, hidden)
    assert megatron["module.decoder.layers.cross_attention.linear_kv.weight"].shape == (2, 2 * hidden, 1024)
    assert megatron["module.decoder.layers.adaLN.adaLN_modulation.2.weight"].shape == (2, 9 * hidden, 3 * 8)
    assert "module.x_embedder.proj.1.weight" in megatron and "module.final_layer.linear.weight" in megatron
    blk = "transformer_blocks.1.attn1."
    for head in range(2):
        rows = slice(head * hd, (head + 1) * hd)
        for j, part in enumerate(("to_q", "to_k", "to_v")):
            fused_rows = slice((3 * head + j) * hd, (3 * head + j + 1) * hd)
            assert torch.equal(qkv[1, fused_rows], ours[f"{blk}{part}.weight"][rows]), (head, part)
    from cosmos_lib.nemo_convert import nemo_to_diffusers

    converted = nemo_to_diffusers(megatron)
    assert set(converted) == set(ours)
    for key in ours:
        assert torch.equal(converted[key], ours[key]), key

    # our checkpoint is also a NeMo checkpoint to start another run from (init_from), exact config
    from cosmos_lib.train.model import pretrained_state_dict, resolve_config

    assert resolve_config("tiny", "video2world", init_from=ckpt) == checkpoint.read_model_config(ckpt)
    with pytest.raises(ValueError, match="in_channels=17 but task 'text2world' needs 16"):
        resolve_config("tiny", "text2world", init_from=ckpt)
    start = pretrained_state_dict(ckpt)
    assert set(start) == set(ours) and all(torch.equal(start[k], ours[k]) for k in ours)

    from cosmos_lib.train.export import export
    from cosmos_lib.train.model import transformer_class

    # in this process (a process group is up since _run) and as the export rule runs it (none)
    out = export(tmp_path / "run", tmp_path / "export" / "transformer", dtype="float32")
    res = subprocess.run([sys.executable, "-m", "cosmos_lib.train", "export", "--checkpoint", str(tmp_path / "run"),
                          "--out", str(tmp_path / "export_cli" / "transformer"), "--dtype", "bfloat16"],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    model = transformer_class().from_pretrained(out)
    assert model.config.in_channels == 17
    from safetensors.torch import load_file

    theirs = load_file(tmp_path / "export_cli" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert set(theirs) == set(ours)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ours[key]), key
        assert theirs[key].dtype == torch.bfloat16 and torch.equal(theirs[key], ours[key].to(torch.bfloat16)), key


def test_bad_dataset_fails_before_training(tmp_path):
    from cosmos_lib.sample_format import SampleError

    (tmp_path / "ds").mkdir()
    with pytest.raises(SampleError, match="is empty"):
        _run({"max_steps": 1, "global_batch_size": 1}, tmp_path / "ds", tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("backend", ["torch_dist", "zarr"])
def test_init_from_a_nemo_checkpoint(dataset, tmp_path, monkeypatch, backend):
    """train.init_from: a NeMo checkpoint folder (NVIDIA ships nemo/ in the model repos, zarr or
    torch_dist) gives the architecture and the starting weights; `model` is then not needed."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from cosmos_lib import nemo_checkpoint
    from cosmos_lib.train import trainer
    from cosmos_lib.train.model import random_state_dict, resolve_config, transformer_config

    start = random_state_dict(transformer_config("tiny", "text2world"), seed=77)  # not the run's seed 5
    snapshot = tmp_path / "Cosmos-tiny-Text2World"  # laid out like an HF snapshot: nemo/weights
    nemo_checkpoint.save_nemo_checkpoint(start, snapshot / "nemo" / "weights", backend=backend)
    assert resolve_config("7B", "text2world", init_from=snapshot) == nemo_checkpoint.load_nemo_as_diffusers(snapshot)[1]

    seen = {}
    real_loss = trainer.denoise_loss

    def first_step_weights(model, *args, **kwargs):  # the weights the first forward sees
        if not seen:
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
            seen.update({k: v.detach().clone() for k, v in full.items()})  # (may alias the parameters)
        return real_loss(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "denoise_loss", first_step_weights)
    summary = _run({"model": "nvidia/Cosmos-1.0-Diffusion-7B-Text2World", "init_from": str(snapshot),
                    "max_steps": 1, "global_batch_size": 1, "save_every": 1}, dataset, tmp_path / "run")
    assert summary["step"] == 1
    assert set(seen) == set(start)
    for key in start:
        assert torch.equal(seen[key], start[key]), key
    trained = _load_ours(tmp_path / "run" / "checkpoints" / "step=1")
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # and the step trained them

    with pytest.raises(FileNotFoundError, match="not a NeMo checkpoint folder"):
        resolve_config("tiny", "text2world", init_from=tmp_path / "run")


def test_world_size_must_divide_the_heads(tmp_path):
    from cosmos_lib.train.model import transformer_config

    tiny = transformer_config("tiny", "text2world")
    for world in (1, 2):  # the tiny model shards as NeMo keys on 1 and 2 ranks
        checkpoint.check_world_size(tiny, world)
    with pytest.raises(ValueError, match="2 attention heads, which do not divide over 3 training processes"):
        checkpoint.check_world_size(tiny, 3)
    checkpoint.check_world_size(transformer_config("14B", "text2world"), 8)  # 40 heads / 8
    with pytest.raises(ValueError, match="40 attention heads"):
        checkpoint.check_world_size(transformer_config("14B", "text2world"), 16)
    # the train_check rule's command refuses the geometry before any job is queued
    (tmp_path / "ds").mkdir()
    _write(tmp_path / "ds", "a_c0000", torch.randn(SHAPE))
    res = subprocess.run([sys.executable, "-m", "cosmos_lib.train", "check", "--config-json",
                          json.dumps({**BASE, "nproc_per_node": 3, "global_batch_size": 3}),
                          "--dataset", str(tmp_path / "ds")], env=_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "do not divide over 3 training processes" in res.stderr, res.stderr[-2000:]


def test_checkpoints_with_diffusers_key_names_still_resume_and_export(dataset, tmp_path, monkeypatch):
    """Runs checkpointed before weights/ used NeMo's names (common.pt key_names "diffusers")."""
    cfg = {"max_steps": 1, "global_batch_size": 1, "save_every": 1}
    monkeypatch.setattr(checkpoint, "KEY_NAMES", "diffusers")
    _run(cfg, dataset, tmp_path / "run")
    old = checkpoint.step_dir(tmp_path / "run", 1)
    assert checkpoint.key_names(old) == "diffusers"
    monkeypatch.undo()
    before = _load_ours(old)
    assert "transformer_blocks.0.attn1.to_q.weight" in before
    _run({**cfg, "max_steps": 2}, dataset, tmp_path / "run")  # resumes from the diffusers-keyed step 1
    _run({**cfg, "max_steps": 2}, dataset, tmp_path / "ref")  # uninterrupted
    assert sorted(_losses(tmp_path / "run")) == [1, 2]
    assert _losses(tmp_path / "run")[2] == pytest.approx(_losses(tmp_path / "ref")[2], rel=1e-5)
    new = checkpoint.step_dir(tmp_path / "run", 2)
    assert checkpoint.key_names(new) == "nemo"
    after = _load_ours(new)
    assert set(after) == set(before) and any(not torch.equal(after[k], before[k]) for k in before)
