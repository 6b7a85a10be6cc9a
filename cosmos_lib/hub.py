"""Where model weights come from: a local folder or a Hugging Face repo (with optional subfolder).

A *source* string is either

* a local folder: an existing path, or one starting with ``/``, ``./``, ``../`` or ``~``; or
* a Hugging Face repo id with an optional subfolder: ``owner/name`` or ``owner/name/sub/folder``
  (e.g. ``nvidia/Cosmos-1.0-Diffusion-7B-Text2World/vae``).

:func:`fetch` turns a source into a local folder for one *role* (``tokenizer``, ``text_encoder``,
``diffusion_model``), downloading through ``huggingface_hub.snapshot_download`` only the files that
role needs. huggingface_hub itself honours ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_TOKEN`` and
``HF_HUB_OFFLINE``; this module never reads, passes or logs the token.

The download rule of the workflow calls :func:`fetch` once and records the resolved folder with
:func:`write_manifest`; compute jobs call :func:`read_manifest` and never reach the network.

Which files each role needs follows what the loaders read (``tokenizer.py``, ``text_encoder.py``)
and the layouts of ``nvidia/Cosmos-1.0-Tokenizer-CV8x8x8`` (``encoder.jit``, ``mean_std.pt``),
``google-t5/t5-11b`` (``config.json``, weights, ``spiece.model``, ``tokenizer.json``) and the diffusers
model repos ``nvidia/Cosmos-1.0-Diffusion-*`` (``vae/``, ``text_encoder/``, ``tokenizer/``,
``transformer/``, ``model_index.json``).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from .sample_format import atomic_write_text

ROLES = ("tokenizer", "text_encoder", "diffusion_model")
MANIFEST_VERSION = 1

#: an HF repo id, optionally followed by a subfolder: owner/name[/sub/folder]
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)*$")

# --- files per role --------------------------------------------------------------------------
# Patterns are matched by huggingface_hub with fnmatch, where '*' also matches '/': every pattern
# here therefore starts with a fixed name so that it never reaches into another folder of the repo
# (a bare '*.safetensors' at the root of a diffusers repo would pull the 14B transformer too).
_TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
)
_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model-*-of-*.safetensors",
)
_T5_TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_TORCHSCRIPT_TOKENIZER_FILES = ("encoder.jit", "mean_std.pt", "config.json")


def _join(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p])


def role_patterns(role: str, subfolder: str | None = None) -> list[str]:
    """The ``allow_patterns`` of ``role`` for a repo (relative to the repo root, under ``subfolder``).

    * ``tokenizer``: a TorchScript tokenizer repo (``encoder.jit``, ``mean_std.pt``, ``config.json``),
      a diffusers VAE folder (``config.json`` + safetensors), or a diffusers model repo's ``vae/``.
    * ``text_encoder``: a T5 repo (config, weights, tokenizer files) or a diffusers model repo's
      ``text_encoder/`` + ``tokenizer/``.
    * ``diffusion_model``: a diffusers model repo's ``transformer/``, ``scheduler/`` and ``model_index.json``.
    """
    sub = (subfolder or "").strip("/")
    if role == "tokenizer":
        names = [*_TORCHSCRIPT_TOKENIZER_FILES, *_DIFFUSERS_WEIGHTS]
        names += [_join("vae", n) for n in ("config.json", *_DIFFUSERS_WEIGHTS)]
    elif role == "text_encoder":
        t5 = ["config.json", *_TRANSFORMERS_WEIGHTS, *_T5_TOKENIZER_FILES]
        names = t5 + [_join("text_encoder", n) for n in ("config.json", *_TRANSFORMERS_WEIGHTS)]
        names += [_join("tokenizer", n) for n in _T5_TOKENIZER_FILES]
    elif role == "diffusion_model":
        names = ["model_index.json", "transformer/*", "scheduler/*"]
    else:
        raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")
    return [_join(sub, n) for n in names]


def select_files(role: str, subfolder: str | None, repo_files: list[str]) -> list[str]:
    """The files of a repo listing that ``role`` needs: :func:`role_patterns`, then, per folder,
    safetensors weights only where the folder has them (no ``.bin`` twin is downloaded)."""
    patterns = role_patterns(role, subfolder)
    chosen = [f for f in repo_files if any(fnmatchcase(f, p) for p in patterns)]
    folders_with_safetensors = {posixpath.dirname(f) for f in chosen if f.endswith(".safetensors")}
    return sorted(
        f
        for f in chosen
        if not (
            (f.endswith(".bin") or f.endswith(".bin.index.json"))
            and posixpath.dirname(f) in folders_with_safetensors
        )
    )


# --- sources ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """A parsed source: either ``local_path`` or ``repo_id`` (+ optional ``subfolder``)."""

    repo_id: str | None = None
    subfolder: str | None = None
    local_path: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


class HubError(RuntimeError):
    """Weights could not be found or fetched; the message says which source and what to do."""


def parse_source(source: str | os.PathLike) -> ModelSource:
    """Classify ``source`` as a local folder or an HF repo id with optional subfolder."""
    text = os.fspath(source).strip()
    if not text:
        raise ValueError("model source is empty: give a local folder or a Hugging Face repo id (owner/name)")
    if (
        text in (".", "..", "~")
        or text.startswith(("/", "./", "../", "~/", "~"))
        or os.path.exists(text)
    ):
        return ModelSource(local_path=Path(text).expanduser())
    if not _REPO_RE.match(text) or any(part in (".", "..") for part in text.split("/")):
        raise ValueError(
            f"model source {text!r} is neither an existing folder nor a Hugging Face repo id "
            "(owner/name or owner/name/subfolder); local folders must exist or start with '/', './', '../' or '~'"
        )
    owner, name, *sub = text.split("/")
    return ModelSource(repo_id=f"{owner}/{name}", subfolder="/".join(sub) or None)


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cache_dir() -> str:
    """The hub cache as huggingface_hub defines it, read now (so a changed environment counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.path.expanduser(os.environ["HUGGINGFACE_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _cached_file_list(repo_id: str, revision: str | None, cache_dir: str) -> list[str] | None:
    """The repo's file listing as huggingface_hub cached it at download time, or None."""
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:  # older huggingface_hub: no cached listing, and no completeness check either
        return None
    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)]
    except Exception:  # noqa: BLE001 - no cached listing: fall back to the role's patterns
        return None


def _missing_message(repo_id: str, cache_dir: str) -> str:
    return (
        f"model repo {repo_id!r} is not in the Hugging Face cache ({cache_dir}) and downloads are off here "
        "(compute jobs never download). Run the download step first (`snakemake download`, on a machine "
        "that reaches huggingface.co; HF_HOME/HF_HUB_CACHE must point to the same cache), "
        "or set this model to a local folder in the config."
    )


def _auth_message(repo_id: str, what: str) -> str:
    return (
        f"model repo {repo_id!r} {what}. If it is gated, accept its licence on https://huggingface.co/{repo_id} "
        "and make a token available to huggingface_hub (environment variable HF_TOKEN, or `hf auth login`); "
        "the token itself is never printed here."
    )


def _download(repo_id: str, role: str, subfolder: str | None, *, allow_download: bool, revision: str | None) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = not allow_download or _env_offline()
    cache_dir = _cache_dir()
    try:
        if offline:
            listing = _cached_file_list(repo_id, revision, cache_dir)
        else:
            listing = HfApi().list_repo_files(repo_id, revision=revision)
        if listing is None:
            allow = role_patterns(role, subfolder)
        else:
            allow = select_files(role, subfolder, listing)
            if not allow:
                raise HubError(
                    f"model repo {repo_id!r}{' subfolder ' + repr(subfolder) if subfolder else ''} holds no files "
                    f"for the {role} (looked for {role_patterns(role, subfolder)[:6]} ...); check the source"
                )
        snapshot = snapshot_download(
            repo_id, revision=revision, allow_patterns=allow, local_files_only=offline, cache_dir=cache_dir
        )
    except HubError:
        raise
    except GatedRepoError as exc:
        raise HubError(_auth_message(repo_id, "is gated and this machine has no access")) from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"model repo {repo_id!r} has no revision {revision or 'main'!r}") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(_auth_message(repo_id, "was not found (wrong name, private, or gated)")) from exc
    except LocalEntryNotFoundError as exc:
        if offline:
            raise HubError(_missing_message(repo_id, cache_dir)) from exc
        raise HubError(f"model repo {repo_id!r}: cannot reach the Hugging Face Hub and it is not cached ({exc})") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(_auth_message(repo_id, f"refused access (HTTP {status})")) from exc
        raise HubError(f"model repo {repo_id!r}: Hugging Face Hub error ({exc.__class__.__name__}: {exc})") from exc
    except OSError as exc:  # network failures surface as ConnectionError/OSError subclasses
        if offline:
            raise HubError(_missing_message(repo_id, cache_dir)) from exc
        raise HubError(f"model repo {repo_id!r}: download failed ({exc.__class__.__name__}: {exc})") from exc
    folder = Path(snapshot)
    if subfolder:
        folder = folder / subfolder
    if not folder.is_dir():
        raise HubError(f"model repo {repo_id!r} has no subfolder {subfolder!r} (looked in {snapshot})")
    return folder


def check_role_folder(folder: Path, role: str) -> Path:
    """Cheap check that ``folder`` looks like what the ``role``'s loader reads; the loaders check deeply."""
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")
    expected = {
        "tokenizer": ("encoder.jit", "config.json", "vae/config.json"),
        "text_encoder": ("config.json", "text_encoder/config.json"),
        "diffusion_model": ("transformer/config.json", "config.json"),
    }[role]
    if not any((folder / name).is_file() for name in expected):
        raise HubError(f"{folder}: does not hold a {role} (expected one of {list(expected)})")
    return folder


def fetch(source: str | os.PathLike, *, role: str, allow_download: bool = True, revision: str | None = None) -> Path:
    """A local folder holding the ``role``'s files of ``source``.

    Local folder: checked and returned. Repo id: ``snapshot_download`` of only the role's files
    (``local_files_only`` when ``allow_download`` is False or ``HF_HUB_OFFLINE`` is set), then the
    subfolder. Raises :class:`HubError` with what to do when the weights cannot be had.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")
    parsed = parse_source(source)
    if parsed.is_local:
        folder = parsed.local_path
        if not folder.is_dir():
            raise HubError(f"{folder}: model folder for the {role} does not exist")
        return check_role_folder(folder.resolve(), role)
    folder = _download(parsed.repo_id, role, parsed.subfolder, allow_download=allow_download, revision=revision)
    return check_role_folder(folder, role)


# --- manifest --------------------------------------------------------------------------------
def write_manifest(path: str | os.PathLike, source: str | os.PathLike, role: str, local_path: str | os.PathLike) -> None:
    """Record (atomically) where the download step put a model; holds no secrets, only paths."""
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")
    data = {
        "manifest_version": MANIFEST_VERSION,
        "role": role,
        "source": os.fspath(source),
        "local_path": str(Path(local_path).resolve()),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_manifest(path: str | os.PathLike, role: str | None = None) -> Path:
    """The local folder recorded by :func:`write_manifest`; checks it still exists (and the role)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        local = Path(data["local_path"])
        recorded_role = data["role"]
    except FileNotFoundError as exc:
        raise HubError(f"{path}: model manifest missing; run the download step (`snakemake download`)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HubError(f"{path}: not a model manifest ({exc.__class__.__name__}: {exc})") from exc
    if role is not None and recorded_role != role:
        raise HubError(f"{path}: manifest is for the {recorded_role}, not the {role}")
    if not local.is_dir():
        raise HubError(
            f"{path}: the recorded model folder {local} no longer exists; run the download step again"
        )
    return local
