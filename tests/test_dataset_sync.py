"""The flat dataset folder: exactly the finished samples, updated incrementally."""

import os

import pytest
import torch

from cosmos_lib import dataset, sample_format


def make_video_samples(samples_dir, vid, n, value=0.0):
    folder = samples_dir / vid
    folder.mkdir(parents=True, exist_ok=True)
    prefixes = []
    for i in range(n):
        prefix = sample_format.chunk_prefix(vid, i)
        latent = torch.full((16, 2, 2, 3), value + i)
        sample_format.write_sample(
            folder, prefix,
            info=sample_format.make_info(height=48, width=64, fps=30, num_frames=9, video_path=f"/x/{vid}.mp4", start_frame=i),
            video_latent=latent, conditioning_latent=latent, t5_embeddings=torch.zeros(512, 1024),
        )
        prefixes.append(prefix)
    return {"video": f"{vid}.mp4", "video_id": vid, "status": "ok", "reason": "", "samples": prefixes}


def test_sync_links_all_samples_and_only_them(tmp_path):
    samples, ds = tmp_path / "samples", tmp_path / "dataset"
    reports = [make_video_samples(samples, "a", 2), make_video_samples(samples, "b", 3)]
    reports.append({"video": "c.mp4", "video_id": "c", "status": "skipped", "reason": "short", "samples": []})
    counts = dataset.sync_dataset(reports, samples, ds)
    assert counts == {"samples": 5, "linked": 5, "files_removed": 0}
    assert sorted(os.listdir(ds)) == sorted(f"{p}.{s}" for r in reports for p in r["samples"] for s in sample_format.SUFFIXES)
    assert sample_format.validate_folder(ds) == sorted(p for r in reports for p in r["samples"])
    # hard links, not copies
    assert os.stat(ds / "a_c0000.video_latent.pth").st_ino == os.stat(samples / "a" / "a_c0000.video_latent.pth").st_ino


def test_sync_is_incremental_and_removes_stale(tmp_path):
    samples, ds = tmp_path / "samples", tmp_path / "dataset"
    a, b = make_video_samples(samples, "a", 2), make_video_samples(samples, "b", 2)
    dataset.sync_dataset([a, b], samples, ds)
    # nothing changed: nothing linked again
    assert dataset.sync_dataset([a, b], samples, ds)["linked"] == 0
    # b re-encoded with other values and fewer chunks; a gone; a leftover temporary file
    import shutil

    shutil.rmtree(samples / "b")
    b = make_video_samples(samples, "b", 1, value=7.0)
    (ds / ".b_c0000.info.json.link").write_text("partial")
    counts = dataset.sync_dataset([b], samples, ds)
    assert counts["linked"] == 1 and counts["files_removed"] == 5 * 3
    assert sample_format.validate_folder(ds) == ["b_c0000"]
    assert torch.load(ds / "b_c0000.video_latent.pth").float().mean().item() == pytest.approx(7.0)


def test_summary_and_manifest(tmp_path):
    samples = tmp_path / "samples"
    reports = [
        make_video_samples(samples, "a", 2),
        {"video": "bad file.mp4", "video_id": "bad_file-12345678", "status": "failed", "reason": "not a video", "samples": []},
    ]
    tsv = dataset.summary_tsv(reports).splitlines()
    assert tsv[0].split("\t") == list(dataset.SUMMARY_COLUMNS)
    assert tsv[1].split("\t") == ["a.mp4", "a", "ok", "2", ""]
    assert tsv[2].split("\t") == ["bad file.mp4", "bad_file-12345678", "failed", "0", "not a video"]
    m = dataset.manifest(reports, tmp_path / "dataset")
    assert m["num_samples"] == 2 and m["videos_by_status"] == {"ok": 1, "failed": 1}
