"""The sample format module: shapes, atomic writes, validation errors that name the file."""

import json
import os

import pytest
import torch

from cosmos_lib import sample_format as sf


def write(folder, prefix, latent_shape=(16, 2, 4, 6), **overrides):
    latent = torch.randn(latent_shape)
    kwargs = dict(
        info=sf.make_info(height=48, width=64, fps=24.0, num_frames=9, video_path="/data/v.mp4", start_frame=3),
        video_latent=latent, conditioning_latent=latent, t5_embeddings=torch.randn(512, 1024),
    )
    kwargs.update(overrides)
    sf.write_sample(folder, prefix, **kwargs)


def test_latent_shape_of_the_real_format():
    assert sf.latent_shape(121, 704, 1280) == (16, 16, 88, 160)
    assert sf.conditioning_latent_frames(9) == 2
    with pytest.raises(ValueError):
        sf.latent_shape(120, 704, 1280)
    with pytest.raises(ValueError):
        sf.latent_shape(121, 700, 1280)


def test_written_sample_has_the_five_files_in_the_format(tmp_path):
    write(tmp_path, "vid_c0000")
    assert sorted(os.listdir(tmp_path)) == sorted(f"vid_c0000.{s}" for s in sf.SUFFIXES)
    data = sf.read_sample(tmp_path, "vid_c0000")
    for suffix in sf.TENSOR_SUFFIXES:
        assert data[suffix].dtype == torch.bfloat16
    assert torch.equal(data[sf.T5_MASK], torch.ones(512, dtype=torch.bfloat16))
    info = json.loads((tmp_path / "vid_c0000.info.json").read_text())
    assert info == {"height": 48, "width": 64, "fps": 24.0, "num_frames": 9, "video_path": "v.mp4", "start_frame": 3}
    # saved tensors own their storage (no view of a bigger batch dragged along)
    assert os.path.getsize(tmp_path / "vid_c0000.video_latent.pth") < 16 * 2 * 4 * 6 * 2 + 2000


def test_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(obj, fh):
        fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        write(tmp_path, "v_c0000")
    assert os.listdir(tmp_path) == []


def test_prefix_rules():
    with pytest.raises(sf.SampleError):
        sf.check_prefix("has.dot")
    with pytest.raises(sf.SampleError):
        sf.check_prefix(".hidden")
    assert sf.chunk_prefix("v", 3) == "v_c0003"
    assert sf.chunk_prefix("v", 12345) == "v_c12345"


def test_validate_folder_errors_name_the_file(tmp_path):
    with pytest.raises(sf.SampleError, match="does not exist"):
        sf.validate_folder(tmp_path / "nope")
    with pytest.raises(sf.SampleError, match="empty"):
        sf.validate_folder(tmp_path)
    write(tmp_path, "a_c0000")
    write(tmp_path, "b_c0000")
    assert sf.validate_folder(tmp_path) == ["a_c0000", "b_c0000"]
    (tmp_path / "b_c0000.t5_text_mask.pth").unlink()
    with pytest.raises(sf.SampleError, match=r"b_c0000\.t5_text_mask\.pth: missing"):
        sf.validate_folder(tmp_path)
    write(tmp_path, "b_c0000", latent_shape=(16, 2, 4, 8))
    with pytest.raises(sf.SampleError, match=r"b_c0000\.video_latent\.pth: shape"):
        sf.validate_folder(tmp_path)
    write(tmp_path, "b_c0000")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(sf.SampleError, match="notes.txt: not a sample file"):
        sf.validate_folder(tmp_path)
    (tmp_path / "notes.txt").unlink()
    torch.save(torch.zeros(512, dtype=torch.float32), tmp_path / "a_c0000.t5_text_mask.pth")
    with pytest.raises(sf.SampleError, match=r"a_c0000\.t5_text_mask\.pth: dtype"):
        sf.validate_folder(tmp_path)
    (tmp_path / "a_c0000.t5_text_mask.pth").write_bytes(b"garbage")
    with pytest.raises(sf.SampleError, match=r"a_c0000\.t5_text_mask\.pth: cannot be read"):
        sf.validate_folder(tmp_path)


def test_the_workflow_files_import_no_torch():
    """Every Snakemake process parses the Snakefile (the planning one, and each cluster job's, once
    per video): what rules/*.smk import from cosmos_lib must not pull in torch (seconds each)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    smk = [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))]
    imports = [line.strip() for path in smk for line in path.read_text().splitlines()
               if re.match(r"\s*(from cosmos_lib[\w.]* import|import cosmos_lib)", line)]
    assert len(imports) >= 3, imports  # the lines this test is about are found
    code = "\n".join([*imports, "import sys", "print('torch' in sys.modules)"])
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", f"the workflow's imports load torch:\n{code}"
