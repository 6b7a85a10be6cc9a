"""hub: sources, role file selection, fetch from local folders and from a fake (offline) hub cache."""

import json
import shutil
from pathlib import Path

import pytest

from cosmos_lib import hub
from cosmos_lib.hub import HubError, ModelSource, fetch, parse_source, read_manifest, select_files, write_manifest
from cosmos_lib.text_encoder import TextEncoder
from cosmos_lib.tiny_models import save_tiny_t5, save_tiny_tokenizer_diffusers, save_tiny_tokenizer_torchscript
from cosmos_lib.tokenizer import VideoTokenizer

REV = "0123456789abcdef0123456789abcdef01234567"
SECRET = "hf_not_a_real_token_but_must_never_show"


# --- parse_source ----------------------------------------------------------------------------
def test_parse_repo_ids_and_subfolders():
    assert parse_source("google-t5/t5-11b") == ModelSource(repo_id="google-t5/t5-11b")
    assert parse_source("nvidia/Cosmos-1.0-Diffusion-7B-Text2World/vae") == ModelSource(
        repo_id="nvidia/Cosmos-1.0-Diffusion-7B-Text2World", subfolder="vae"
    )
    assert parse_source("a/b/c/d").subfolder == "c/d"


def test_parse_local_paths(tmp_path, monkeypatch):
    assert parse_source(str(tmp_path)).local_path == tmp_path
    assert parse_source("./models/t5").local_path == Path("models/t5")
    assert parse_source("../t5").is_local
    assert parse_source("~/weights").local_path == Path.home() / "weights"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert parse_source("owner/name").is_local  # an existing folder wins over a repo id


@pytest.mark.parametrize("bad", ["", "justaname", "a//b", "owner/name/../x", "owner/na me"])
def test_parse_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_source(bad)


# --- which files each role downloads ---------------------------------------------------------
DIFFUSERS_REPO = [
    "model_index.json",
    "README.md",
    "scheduler/scheduler_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder/model-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/spiece.model",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "guardrail/model.safetensors",
]
T5_REPO = [
    "config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5",
    "flax_model.msgpack", "spiece.model", "tokenizer.json", "README.md",
]
T5_BIN_ONLY = ["config.json", "pytorch_model.bin", "spiece.model", "tokenizer.json"]
TOKENIZER_REPO = ["encoder.jit", "decoder.jit", "autoencoder.jit", "mean_std.pt", "config.json", "README.md"]


def test_text_encoder_files_from_a_diffusers_repo():
    files = select_files("text_encoder", None, DIFFUSERS_REPO)
    assert files == sorted(f for f in DIFFUSERS_REPO if f.startswith(("text_encoder/", "tokenizer/")))


def test_text_encoder_files_from_a_t5_repo_prefer_safetensors():
    assert select_files("text_encoder", None, T5_REPO) == sorted(
        ["config.json", "model.safetensors", "spiece.model", "tokenizer.json"]
    )
    assert select_files("text_encoder", None, T5_BIN_ONLY) == sorted(T5_BIN_ONLY)


def test_tokenizer_files():
    assert select_files("tokenizer", None, TOKENIZER_REPO) == ["config.json", "encoder.jit", "mean_std.pt"]
    vae = ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    assert select_files("tokenizer", "vae", DIFFUSERS_REPO) == vae
    assert select_files("tokenizer", None, DIFFUSERS_REPO) == vae  # repo root: only its vae/


def test_diffusion_model_files():
    files = select_files("diffusion_model", None, DIFFUSERS_REPO)
    assert "model_index.json" in files
    assert all(f.startswith(("transformer/", "scheduler/")) or f == "model_index.json" for f in files)
    assert len([f for f in files if f.startswith("transformer/")]) == 4


def test_unknown_role():
    with pytest.raises(ValueError, match="unknown model role"):
        select_files("vae", None, DIFFUSERS_REPO)


# --- fetch: local folders --------------------------------------------------------------------
def test_fetch_local_folder(tmp_path):
    folder = save_tiny_tokenizer_torchscript(tmp_path / "tok")
    assert fetch(str(folder), role="tokenizer") == folder.resolve()
    with pytest.raises(HubError, match="does not exist"):
        fetch(str(tmp_path / "missing"), role="tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="does not hold a text_encoder"):
        fetch(str(tmp_path / "empty"), role="text_encoder")


# --- fetch: a fake hub cache, offline ---------------------------------------------------------
@pytest.fixture()
def fake_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return cache


def _cache_repo(cache: Path, repo_id: str) -> Path:
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / REV
    snapshot.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(REV)
    return snapshot


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_for_hub")
    return {
        "vae": save_tiny_tokenizer_diffusers(root / "vae"),
        "t5": save_tiny_t5(root / "t5"),
        "ts": save_tiny_tokenizer_torchscript(root / "ts"),
    }


def test_fetch_diffusers_repo_from_cache_and_load(fake_cache, tiny_models):
    repo = "nvidia/Cosmos-1.0-Diffusion-7B-Text2World"
    snapshot = _cache_repo(fake_cache, repo)
    (snapshot / "model_index.json").write_text("{}")
    shutil.copytree(tiny_models["vae"], snapshot / "vae")
    shutil.copytree(tiny_models["t5"], snapshot / "text_encoder")
    shutil.copytree(tiny_models["t5"], snapshot / "tokenizer")

    vae = fetch(f"{repo}/vae", role="tokenizer")
    assert vae == snapshot / "vae"
    assert VideoTokenizer.load(vae).form == "diffusers"
    root = fetch(repo, role="tokenizer", allow_download=False)
    assert root == snapshot and VideoTokenizer.load(root).folder == snapshot / "vae"
    text = fetch(repo, role="text_encoder")
    assert text == snapshot
    assert TextEncoder.load(text).encode(["a robot"]).shape == (1, 512, 1024)


def test_fetch_t5_and_torchscript_repos_from_cache(fake_cache, tiny_models):
    t5 = _cache_repo(fake_cache, "google-t5/t5-11b")
    shutil.copytree(tiny_models["t5"], t5, dirs_exist_ok=True)
    assert fetch("google-t5/t5-11b", role="text_encoder") == t5
    ts = _cache_repo(fake_cache, "nvidia/Cosmos-1.0-Tokenizer-CV8x8x8")
    shutil.copytree(tiny_models["ts"], ts, dirs_exist_ok=True)
    folder = fetch("nvidia/Cosmos-1.0-Tokenizer-CV8x8x8", role="tokenizer")
    assert VideoTokenizer.load(folder).form == "torchscript"


def test_missing_repo_offline_is_a_clear_error(fake_cache):
    with pytest.raises(HubError) as err:
        fetch("nvidia/Cosmos-1.0-Tokenizer-CV8x8x8", role="tokenizer")
    message = str(err.value)
    assert "nvidia/Cosmos-1.0-Tokenizer-CV8x8x8" in message
    assert "never download" in message and "snakemake download" in message
    assert str(fake_cache) in message
    assert SECRET not in message


def test_allow_download_false_never_reaches_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", no_network)
    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", no_network)
    with pytest.raises(HubError, match="compute jobs never download"):
        fetch("google-t5/t5-11b", role="text_encoder", allow_download=False)


def test_missing_subfolder(fake_cache):
    snapshot = _cache_repo(fake_cache, "owner/repo")
    (snapshot / "model_index.json").write_text("{}")
    with pytest.raises(HubError, match="no subfolder 'vae'"):
        fetch("owner/repo/vae", role="tokenizer")
    with pytest.raises(HubError, match="does not hold a tokenizer"):
        fetch("owner/repo", role="tokenizer")


# --- fetch online (Hub calls replaced by fakes) -----------------------------------------------
def _http_error(cls, status):
    try:  # huggingface_hub >= 2 speaks httpx2, 1.x httpx
        import httpx2 as httpx
    except ImportError:
        import httpx

    response = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
    return cls("refused", response=response)


def test_online_download_asks_only_for_the_role_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = {}
    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", lambda self, repo_id, **kw: list(DIFFUSERS_REPO))

    def fake_snapshot(repo_id, **kwargs):
        calls.update(kwargs, repo_id=repo_id)
        folder = tmp_path / "snap"
        (folder / "text_encoder").mkdir(parents=True, exist_ok=True)
        (folder / "text_encoder" / "config.json").write_text("{}")
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    assert fetch("nvidia/Cosmos-1.0-Diffusion-7B-Text2World", role="text_encoder") == tmp_path / "snap"
    assert calls["repo_id"] == "nvidia/Cosmos-1.0-Diffusion-7B-Text2World"
    assert calls["local_files_only"] is False
    assert not any(p.startswith(("transformer/", "guardrail/", "vae/")) for p in calls["allow_patterns"])
    assert "text_encoder/model-00001-of-00002.safetensors" in calls["allow_patterns"]
    assert "token" not in calls  # huggingface_hub reads HF_TOKEN itself


def test_gated_repo_mentions_hf_token_without_printing_it(tmp_path, monkeypatch):
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    for error in (_http_error(GatedRepoError, 403), _http_error(HfHubHTTPError, 401)):
        def refuse(self, repo_id, _error=error, **kw):
            raise _error

        monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", refuse)
        with pytest.raises(HubError) as err:
            fetch("nvidia/Cosmos-1.0-Diffusion-7B-Text2World", role="diffusion_model")
        assert "HF_TOKEN" in str(err.value) and SECRET not in str(err.value)
        assert "nvidia/Cosmos-1.0-Diffusion-7B-Text2World" in str(err.value)


def test_repo_without_role_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", lambda self, repo_id, **kw: ["README.md"])
    with pytest.raises(HubError, match="holds no files for the tokenizer"):
        fetch("owner/readme-only", role="tokenizer")


# --- manifest --------------------------------------------------------------------------------
def test_manifest_roundtrip_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    folder = tmp_path / "weights"
    folder.mkdir()
    manifest = tmp_path / "manifests" / "tokenizer.json"
    write_manifest(manifest, "nvidia/Cosmos-1.0-Tokenizer-CV8x8x8", "tokenizer", folder)
    assert read_manifest(manifest) == folder.resolve()
    assert read_manifest(manifest, role="tokenizer") == folder.resolve()
    text = manifest.read_text()
    assert SECRET not in text
    assert json.loads(text)["source"] == "nvidia/Cosmos-1.0-Tokenizer-CV8x8x8"
    assert not [p for p in manifest.parent.iterdir() if p.name != "tokenizer.json"]  # no temp leftovers
    with pytest.raises(HubError, match="not the text_encoder"):
        read_manifest(manifest, role="text_encoder")
    shutil.rmtree(folder)
    with pytest.raises(HubError, match="no longer exists"):
        read_manifest(manifest)


def test_manifest_missing_or_broken(tmp_path):
    with pytest.raises(HubError, match="snakemake download"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(HubError, match="not a model manifest"):
        read_manifest(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown model role"):
        write_manifest(tmp_path / "m.json", "a/b", "vae", tmp_path)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub._cache_dir() == str(tmp_path / "home" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub._cache_dir() == str(tmp_path / "cache")
