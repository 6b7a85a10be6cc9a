"""End-to-end runs of the demo workflow through the `snakemake` command.

The demo is run once (module fixture) in a scratch working directory; each test that changes
something works on its own copy of that directory (results and Snakemake's metadata included),
so the incremental cases see exactly the state a user would after the first run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cosmos_lib import sample_format as sf
from cosmos_lib.demo_inputs import DEMO_VIDEOS
from cosmos_lib.naming import video_id

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DEMO = str(REPO / "config" / "demo.yaml")

pytestmark = pytest.mark.slow


SECRETS = {"HF_TOKEN": "hf_secretSENTINEL1234", "WANDB_API_KEY": "wandbSENTINEL5678"}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", DEMO, "--cores", "2", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **SECRETS})
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-5000:]}\n{done.stderr[-8000:]}")
    return done


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of what a run would do now (parsed from the dry run's job stats)."""
    out = snakemake(workdir, "-n", *args)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text.split("Job stats:", 1)[1]
    jobs = {}
    for line in stats.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line)
        if not m:
            break
        if m.group(1) not in ("total", "all"):  # `all` only gathers targets
            jobs[m.group(1)] = int(m.group(2))
    return jobs


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    snakemake(workdir, "all")
    return workdir


@pytest.fixture
def demo_copy(demo_run, tmp_path) -> Path:
    copy = tmp_path / "demo"
    shutil.copytree(demo_run, copy, symlinks=True)
    return copy


def read_summary(workdir: Path) -> dict[str, dict]:
    lines = (workdir / "results" / "summary.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return {row["video"]: row for row in (dict(zip(header, line.split("\t"))) for line in lines[1:])}


def test_demo_dataset_holds_exactly_the_samples_in_the_format(demo_run):
    dataset = demo_run / "results" / "dataset"
    prefixes = sf.validate_folder(dataset, sf.SampleShapes.for_video(121, 64, 96))
    names = sorted(os.listdir(dataset))
    assert names == sorted(f"{p}.{s}" for p in prefixes for s in sf.SUFFIXES)  # nothing else in it
    summary = read_summary(demo_run)
    good = [v for v in DEMO_VIDEOS if not v.broken and v.num_frames >= 121]
    assert {summary[v.name]["status"] for v in good} == {"ok"}
    assert len(prefixes) == 2 * len(good)  # num_chunks 2 in the demo config
    assert {p.rsplit("_c", 1)[0] for p in prefixes} == {video_id(v.name) for v in good}
    for prefix in prefixes:
        assert "." not in prefix
        info = json.loads((dataset / f"{prefix}.info.json").read_text())
        assert set(info) == set(sf.INFO_KEYS) and info["num_frames"] == 121
        spec = next(v for v in good if video_id(v.name) == prefix.rsplit("_c", 1)[0])
        assert (info["width"], info["height"], info["video_path"]) == (spec.width, spec.height, spec.name)
        assert 0 <= info["start_frame"] <= spec.num_frames - 121
        assert info["fps"] == pytest.approx(30.0)


def test_demo_reports_short_and_broken_videos_with_reasons(demo_run):
    summary = read_summary(demo_run)
    short = summary["too_short.mp4"]
    assert short["status"] == "skipped" and short["samples"] == "0" and "shorter than num_frames" in short["reason"]
    broken = summary["broken.mp4"]
    assert broken["status"] == "failed" and broken["samples"] == "0" and "broken.mp4" in broken["reason"]


def test_sample_tensors_semantics(demo_run):
    dataset = demo_run / "results" / "dataset"
    prefix = sf.complete_prefixes(dataset)[0]
    sample = sf.read_sample(dataset, prefix)
    video, cond = sample[sf.VIDEO_LATENT].float(), sample[sf.CONDITIONING_LATENT].float()
    assert video.shape == (16, 16, 8, 12)
    # causal tokenizer: the first 9 frames (latent frames 0 and 1) are the same in both clips ...
    assert torch.allclose(video[:, :2], cond[:, :2], atol=0.05, rtol=0.02)
    # ... the rest of the conditioning clip is mid-grey, not the video
    assert not torch.allclose(video[:, 2:], cond[:, 2:], atol=0.05)
    assert torch.equal(sample[sf.T5_MASK], torch.ones(512, dtype=torch.bfloat16))
    emb = sample[sf.T5_EMBEDDINGS].float()
    used = emb.abs().sum(dim=1) > 0
    n = int(used.sum())
    assert 0 < n < 512 and used[:n].all() and not used[n:].any()  # rows after the prompt's tokens are zero
    # one prompt for the demo: every sample carries the same embedding
    other = sf.read_sample(dataset, sf.complete_prefixes(dataset)[-1])[sf.T5_EMBEDDINGS]
    assert torch.equal(other, sample[sf.T5_EMBEDDINGS])


def test_secrets_are_never_written(demo_run):
    for path in demo_run.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            for secret in SECRETS.values():
                assert secret.encode() not in data, f"{path} holds a secret"


def test_rerun_with_nothing_changed_runs_nothing(demo_copy):
    assert planned_jobs(demo_copy, "all") == {}


def test_tuning_how_videos_are_encoded_reencodes_nothing(demo_copy):
    """encode.* (batch size, decode threads, compile, the worker) says how, not what: a user who
    tunes it on a cluster keeps every sample; a setting the samples depend on redoes every video."""
    import yaml

    config = yaml.safe_load(Path(DEMO).read_text())
    config["encode"] = {"batch_size": 1, "device": "cpu", "decode_threads": "SLICE", "compile": True,
                        "worker_idle_seconds": 0, "text_batch_size": 1}
    tuned = demo_copy / "tuned.yaml"
    tuned.write_text(yaml.safe_dump(config))
    assert planned_jobs(demo_copy, "all", "--configfile", str(tuned)) == {}
    tuned.write_text(yaml.safe_dump({**config, "num_chunks": 3}))
    assert planned_jobs(demo_copy, "all", "--configfile", str(tuned)) == {"encode_video": len(DEMO_VIDEOS), "dataset": 1}


def test_adding_a_video_runs_only_its_jobs_and_the_aggregate(demo_copy):
    videos = demo_copy / "results" / "demo" / "videos"
    before = {p: (demo_copy / "results" / "dataset" / p).stat().st_ino for p in os.listdir(demo_copy / "results" / "dataset")}
    shutil.copy(videos / "robot_arm.mp4", videos / "new robot.v2.mp4")
    assert planned_jobs(demo_copy, "all") == {"encode_video": 1, "dataset": 1}
    snakemake(demo_copy, "all")
    after = set(os.listdir(demo_copy / "results" / "dataset"))
    new_id = video_id("new robot.v2.mp4")
    added = {n for n in after if n.startswith(new_id + "_c")}
    assert len(added) == 2 * len(sf.SUFFIXES)
    # the other videos' samples are the very same files
    assert {p: (demo_copy / "results" / "dataset" / p).stat().st_ino for p in after - added} == before
    assert read_summary(demo_copy)["new robot.v2.mp4"]["status"] == "ok"


def test_chunk_starts_are_reproducible_from_seed_and_name(demo_run, tmp_path):
    """A second run from scratch with the same seed gives the same starts; another seed others."""
    def starts(workdir):
        dataset = workdir / "results" / "dataset"
        return {p: json.loads((dataset / f"{p}.info.json").read_text())["start_frame"] for p in sf.complete_prefixes(dataset)}

    again = tmp_path / "again"
    snakemake(again, "all")
    assert starts(again) == starts(demo_run)
    # a deleted dataset folder is rebuilt, with another seed other starts
    shutil.rmtree(again / "results" / "dataset")
    snakemake(again, "all", "--config", "seed=7")
    assert set(starts(again)) == set(starts(demo_run)) and starts(again) != starts(demo_run)


def test_instructions_each_video_its_prompt_and_editing_one_reruns_that_video(demo_copy):
    instructions = demo_copy / "instructions"
    instructions.mkdir()
    good = [v for v in DEMO_VIDEOS if not v.broken and v.num_frames >= 121]
    for i, v in enumerate(good):
        task = ["open the drawer", "pick up the red block and put it in the box", "wave"][i % 3]
        (instructions / (Path(v.name).stem + ".json")).write_text(json.dumps({"language_instruction_0": task}))
    (instructions / "too_short.json").write_text("{ not json")
    config = ["--config", f"instructions={instructions}"]
    snakemake(demo_copy, "all", *config)
    dataset = demo_copy / "results" / "dataset"
    embeddings = {}
    for v in good:
        p = sf.chunk_prefix(video_id(v.name), 0)
        embeddings[v.name] = torch.load(dataset / f"{p}.{sf.T5_EMBEDDINGS}")
    assert not torch.equal(*[embeddings[v.name] for v in good[:2]])  # each video its own prompt
    summary = read_summary(demo_copy)
    assert summary["too_short.mp4"]["status"] == "failed" and "too_short.json" in summary["too_short.mp4"]["reason"]
    assert planned_jobs(demo_copy, "all", *config) == {}
    # edit one instruction: the prompts aggregate, that video and the dataset, nothing else
    (instructions / (Path(good[0].name).stem + ".json")).write_text(json.dumps({"language_instruction_0": "a new task"}))
    assert planned_jobs(demo_copy, "all", *config) == {"encode_prompts": 1, "encode_video": 1, "dataset": 1}
    snakemake(demo_copy, "all", *config)
    p = sf.chunk_prefix(video_id(good[0].name), 0)
    assert not torch.equal(torch.load(dataset / f"{p}.{sf.T5_EMBEDDINGS}"), embeddings[good[0].name])
    p1 = sf.chunk_prefix(video_id(good[1].name), 0)
    assert torch.equal(torch.load(dataset / f"{p1}.{sf.T5_EMBEDDINGS}"), embeddings[good[1].name])


def test_bad_inputs_are_reported_and_the_run_goes_on(demo_copy):
    from cosmos_lib.demo_videos import write_bad_inputs

    videos = demo_copy / "results" / "demo" / "videos"
    bad = write_bad_inputs(videos)
    snakemake(demo_copy, "all")
    summary = read_summary(demo_copy)
    for path in bad.values():
        row = summary[Path(path).name]
        assert row["status"] == "failed" and row["samples"] == "0"
        assert Path(path).name in row["reason"]
    assert summary["robot_arm.mp4"]["status"] == "ok"
    sf.validate_folder(demo_copy / "results" / "dataset", deep=False)


def test_fail_on_bad_video_fails_the_run_naming_the_file(demo_copy):
    videos = demo_copy / "results" / "demo" / "videos"
    (videos / "not a video.mp4").write_text("this is text, not a video\n")
    done = snakemake(demo_copy, "all", "--keep-going", "--config", "fail_on_bad_video=True", check=False)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    logs = "".join(p.read_text(errors="replace") for p in (demo_copy / "logs" / "encode_video").glob("*.log"))
    assert "not a video.mp4" in text + logs
    # no partial samples of the bad video anywhere
    bad_id = video_id("not a video.mp4")
    assert not (demo_copy / "results" / "samples" / bad_id).exists()
    assert not any(n.startswith(bad_id) for n in os.listdir(demo_copy / "results" / "dataset"))


def test_empty_prompt_is_a_config_error(tmp_path):
    empty = tmp_path / "empty_prompt.yaml"
    empty.write_text('prompt: "   "\n')
    done = snakemake(tmp_path, "-n", "all", "--configfile", str(empty), check=False)
    assert done.returncode != 0
    assert "prompt" in done.stdout + done.stderr


def test_lint_is_clean(tmp_path):
    done = subprocess.run(
        [SNAKEMAKE, "--lint", "--cores", "1", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile", DEMO],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Congratulations" in done.stdout + done.stderr, done.stdout + done.stderr
