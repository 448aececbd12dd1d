"""Where a checkpoint comes from: a local directory or a Hugging Face hub repo id.

Hub sources go through the real ``huggingface_hub.snapshot_download`` (and so the
Hugging Face cache). Offline machines and tests resolve them from a cache laid out by
``seed_hf_cache``: the same layout the hub client writes, so ``snapshot_download(...,
local_files_only=True)`` or ``HF_HUB_OFFLINE=1`` find the snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("akidb_embed.conversion")

# Files a hub snapshot of an embedding model needs (weights, config, tokenizer,
# sentence-transformers module configs). Large training-only files are skipped.
HUB_ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "tokenizer*",
    "vocab*",
    "merges*",
    "*/config.json",
    "*.py",
]


class SourceError(Exception):
    """The source checkpoint is missing, unreachable or incomplete."""


@dataclass(frozen=True)
class ResolvedSource:
    """A checkpoint on local disk and what it was resolved from."""

    path: Path  # local directory holding config.json, weights and tokenizer files
    source: str  # as recorded in the manifest: repo id, or absolute path
    revision: str  # as asked for (hub) or as given (local)
    commit: str | None  # hub commit hash of the snapshot, when known
    is_hub: bool


def looks_like_repo_id(source: str) -> bool:
    """``org/name`` (or ``name``) that is not an existing path."""
    if os.path.exists(source):
        return False
    if source.startswith(("/", "./", "../", "~")):
        return False
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)


def check_checkpoint_dir(path: Path) -> None:
    """Refuse a directory that cannot be a transformers checkpoint, with the reason."""
    if not path.is_dir():
        raise SourceError(f"source {path} is not a directory")
    if not (path / "config.json").is_file():
        raise SourceError(
            f"source {path} has no config.json: expected a Hugging Face checkpoint "
            "directory (config.json, model weights, tokenizer files)"
        )
    weights = [
        p
        for p in path.iterdir()
        if p.name.endswith(".safetensors")
        or p.name in ("pytorch_model.bin",)
        or (p.name.startswith("pytorch_model") and p.name.endswith(".bin"))
    ]
    if not weights:
        raise SourceError(
            f"source {path} has no model weights (*.safetensors or pytorch_model.bin)"
        )
    tokenizer_files = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise SourceError(
            f"source {path} has no tokenizer (one of {', '.join(tokenizer_files)} is needed)"
        )
    # transformers reports an unreadable weights file as missing; say what it is.
    unreadable = sorted(p.name for p in path.iterdir() if p.is_file() and not os.access(p, os.R_OK))
    if unreadable:
        raise SourceError(
            f"source {path}: {', '.join(unreadable)} not readable by UID {os.getuid()} "
            "(the converter's user): make the checkpoint world-readable (chmod -R a+rX)"
        )


def resolve_source(
    source: str, revision: str = "main", cache_dir: Path | None = None
) -> ResolvedSource:
    """A local checkpoint directory, or a hub repo id fetched into the HF cache."""
    expanded = Path(source).expanduser()
    if expanded.exists() or not looks_like_repo_id(source):
        if not expanded.exists():
            raise SourceError(f"source {source} does not exist")
        # Absolute, but symlinks kept: the operator keys artifacts by the path as written.
        path = Path(os.path.abspath(expanded))
        check_checkpoint_dir(path)
        return ResolvedSource(path, str(path), revision, None, False)

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    log.info("resolving %s@%s through the Hugging Face hub client", source, revision)
    try:
        local = snapshot_download(
            repo_id=source,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir else None,
            allow_patterns=HUB_ALLOW_PATTERNS,
        )
    except (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise SourceError(
            f"cannot resolve {source}@{revision}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''} (offline? seed the Hugging Face "
            "cache or pass a local checkpoint directory)"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SourceError(f"cannot download {source}@{revision}: {exc}") from exc
    path = Path(local)
    check_checkpoint_dir(path)
    commit = path.name if len(path.name) == 40 else None
    return ResolvedSource(path, source, revision, commit, True)


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def seed_hf_cache(
    repo_id: str,
    src_dir: Path | str,
    cache_dir: Path | str,
    revision: str = "main",
) -> Path:
    """Lay out a Hugging Face hub cache entry for ``repo_id`` from a local directory.

    Writes ``<cache_dir>/models--org--name/{blobs/<sha256>, snapshots/<commit>/<file>
    -> ../../blobs/<sha256>, refs/<revision>}`` as the hub client does, with a commit
    hash derived from the files' content (stable for the same files). Afterwards
    ``snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
    local_files_only=True)`` (or with ``HF_HUB_OFFLINE=1``) returns the snapshot.
    Returns the snapshot directory.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise SourceError(f"cannot seed the cache from {src}: not a directory")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise SourceError(f"cannot seed the cache from {src}: it holds no files")
    repo = Path(cache_dir) / _repo_folder(repo_id)
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    commit_hash = hashlib.sha1()
    digests: list[tuple[Path, str]] = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        digest = h.hexdigest()
        rel = f.relative_to(src)
        digests.append((rel, digest))
        commit_hash.update(f"{rel.as_posix()}\0{digest}\n".encode())
    commit = commit_hash.hexdigest()  # 40 hex characters, like a git commit

    snapshot = repo / "snapshots" / commit
    for rel, digest in digests:
        blob = blobs / digest
        if not blob.exists():
            tmp = blobs / f".{digest}.tmp-{os.getpid()}"
            shutil.copyfile(src / rel, tmp)
            os.replace(tmp, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    refs = repo / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / revision).write_text(commit)
    return snapshot
