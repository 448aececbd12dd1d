"""How a model is served: from the catalog, explicit options, or the checkpoint itself.

Order of precedence for every rule: an explicit option, then the catalog entry (found
by ``name`` or by hub repo id), then the family (``--family``), then what the checkpoint
says (``config.json`` hidden size, sentence-transformers ``modules.json`` / pooling
config / ``sentence_bert_config.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from akidb_embed.catalog import (
    FAMILIES,
    POOLING_MODES,
    CatalogEntry,
    Family,
    UnknownModelError,
    find_by_repo,
    lookup,
    padding_side_for,
)


class RulesError(ValueError):
    """The serving rules of a model cannot be determined or contradict the checkpoint."""


@dataclass(frozen=True)
class ModelRules:
    name: str
    family: str
    architecture: str
    pooling: str
    padding_side: str
    normalize: bool
    dimension: int
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    matryoshka_dimensions: tuple[int, ...] = field(default=())
    catalog_name: str | None = None
    task: str = "embed"


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RulesError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict | list):
        return None
    return data


def read_config(path: Path) -> dict[str, Any]:
    data = _read_json(path / "config.json")
    if not isinstance(data, dict):
        raise RulesError(f"{path / 'config.json'} is missing or not a JSON object")
    return data


def sentence_transformers_hints(path: Path) -> dict[str, Any]:
    """Pooling, normalization and max length from a sentence-transformers checkpoint."""
    hints: dict[str, Any] = {}
    modules = _read_json(path / "modules.json")
    pooling_dir = "1_Pooling"
    if isinstance(modules, list):
        for module in modules:
            if not isinstance(module, dict):
                continue
            kind = str(module.get("type", ""))
            if kind.endswith(".Pooling"):
                pooling_dir = str(module.get("path") or pooling_dir)
            if kind.endswith(".Normalize"):
                hints["normalize"] = True
        hints.setdefault("normalize", False)
    pooling_cfg = _read_json(path / pooling_dir / "config.json")
    if isinstance(pooling_cfg, dict):
        if pooling_cfg.get("pooling_mode_cls_token"):
            hints["pooling"] = "cls"
        elif pooling_cfg.get("pooling_mode_lasttoken"):
            hints["pooling"] = "last-token"
        elif pooling_cfg.get("pooling_mode_mean_tokens"):
            hints["pooling"] = "mean"
    st_cfg = _read_json(path / "sentence_bert_config.json")
    if isinstance(st_cfg, dict) and isinstance(st_cfg.get("max_seq_length"), int):
        hints["max_length"] = st_cfg["max_seq_length"]
    return hints


def kubernetes_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].strip("-") or "model"


def model_card_title(path: Path) -> str | None:
    """The first '# Title' of the checkpoint's model card (README.md), if any."""
    card = path / "README.md"
    if not card.is_file():
        return None
    for line in card.read_text(errors="replace").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def _catalog_entry(
    name: str | None, source: str, is_hub: bool, checkpoint: Path, hidden: int
) -> CatalogEntry | None:
    if name:
        try:
            return lookup(name)
        except UnknownModelError:
            pass
    if is_hub:
        return find_by_repo(source)
    # A local copy of a catalog model (e.g. a packaged snapshot): recognised by its model
    # card's title, if the hidden size agrees, so it is served under its catalog names.
    title = model_card_title(checkpoint)
    entry = find_by_repo(title) if title else None
    return entry if entry is not None and entry.dimension == hidden else None


def task_of(config: dict[str, Any]) -> str:
    """rerank for a sequence-classification checkpoint (a cross-encoder), else embed."""
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "rerank"
    return "embed"


def resolve_rules(
    checkpoint: Path,
    source: str,
    is_hub: bool,
    *,
    name: str | None = None,
    family: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    matryoshka_dimensions: list[int] | tuple[int, ...] | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> ModelRules:
    config = read_config(checkpoint)
    architecture = str(config.get("model_type") or "")
    if not architecture:
        raise RulesError(f"{checkpoint / 'config.json'} has no model_type")
    hidden = config.get("hidden_size") or config.get("d_model") or config.get("dim")
    if not isinstance(hidden, int):
        raise RulesError(f"{checkpoint / 'config.json'} has no integer hidden_size")

    entry = _catalog_entry(name, source, is_hub, checkpoint, hidden)
    fam: Family | None = None
    if family:
        if family not in FAMILIES:
            raise RulesError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        fam = FAMILIES[family]
    elif entry is not None:
        fam = entry.family
    if entry is not None and entry.dimension != hidden:
        raise RulesError(
            f"catalog entry {entry.name} says dimension {entry.dimension} but the checkpoint "
            f"at {checkpoint} has hidden_size {hidden}: wrong source for this name?"
        )
    if fam is not None and fam.architecture != architecture:
        raise RulesError(
            f"family {fam.name} is for {fam.architecture} models but the checkpoint is "
            f"{architecture!r}; pass --pooling (and no --family) for other architectures"
        )
    hints = sentence_transformers_hints(checkpoint)

    chosen_pooling = (
        pooling
        or (fam.pooling if fam else None)
        or hints.get("pooling")
        or ("cls" if task_of(config) == "rerank" else None)  # the head reads the first token
    )
    if chosen_pooling is None:
        raise RulesError(
            f"cannot tell the pooling of {source}: it is not in the catalog, has no "
            "sentence-transformers pooling config; pass --family or --pooling "
            f"({'|'.join(POOLING_MODES)})"
        )
    if chosen_pooling not in POOLING_MODES:
        raise RulesError(f"unknown pooling {chosen_pooling!r}; expected {'|'.join(POOLING_MODES)}")

    if normalize is None:
        normalize = fam.normalize if fam else bool(hints.get("normalize", True))

    if max_length is None:
        if entry is not None:
            max_length = entry.max_length
        elif "max_length" in hints:
            max_length = int(hints["max_length"])
        else:
            positions = config.get("max_position_embeddings")
            max_length = int(positions) if isinstance(positions, int) else 512
            if architecture == "bert":
                max_length = min(max_length, 512)
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and max_length > positions:
        raise RulesError(
            f"max length {max_length} exceeds the model's max_position_embeddings {positions}"
        )
    if max_length < 1:
        raise RulesError(f"max length must be positive, got {max_length}")

    if matryoshka_dimensions is None:
        mrl: tuple[int, ...] = entry.matryoshka_dimensions if entry else ()
    else:
        mrl = tuple(sorted(set(matryoshka_dimensions)))
    bad = [d for d in mrl if d < 1 or d > hidden]
    if bad:
        raise RulesError(f"matryoshka dimensions {bad} are outside 1..{hidden}")

    if name:
        model_name = kubernetes_name(name)
    elif entry is not None:
        model_name = entry.name
    else:
        model_name = kubernetes_name(source.rstrip("/").split("/")[-1])

    return ModelRules(
        name=model_name,
        family=fam.name if fam else f"custom-{architecture}",
        architecture=architecture,
        pooling=chosen_pooling,
        padding_side=padding_side_for(chosen_pooling),
        normalize=normalize,
        dimension=hidden,
        max_length=max_length,
        query_prefix=query_prefix
        if query_prefix is not None
        else (fam.query_prefix if fam else ""),
        document_prefix=(
            document_prefix if document_prefix is not None else (fam.document_prefix if fam else "")
        ),
        matryoshka_dimensions=mrl,
        catalog_name=entry.name if entry else None,
        task=fam.task if fam else task_of(config),
    )
