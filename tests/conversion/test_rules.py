"""Serving rules from the catalog, options and checkpoint; source checks (fast tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from akidb_embed.conversion.rules import RulesError, resolve_rules
from akidb_embed.conversion.source import (
    SourceError,
    check_checkpoint_dir,
    looks_like_repo_id,
    resolve_source,
)
from tests.fixtures.models import build_tiny_bert


def test_catalog_rules_by_name(minilm_checkpoint: Path):
    rules = resolve_rules(minilm_checkpoint, str(minilm_checkpoint), False, name="all-MiniLM-L6-v2")
    assert rules.name == "all-minilm-l6-v2" and rules.catalog_name == "all-minilm-l6-v2"
    assert (rules.pooling, rules.padding_side, rules.normalize) == ("mean", "right", True)
    assert (rules.dimension, rules.max_length) == (384, 256)


def test_catalog_rules_by_repo_id(minilm_checkpoint: Path):
    rules = resolve_rules(minilm_checkpoint, "sentence-transformers/all-MiniLM-L6-v2", True)
    assert rules.name == "all-minilm-l6-v2" and rules.family == "sentence-transformers"


def test_local_copy_of_a_catalog_model_is_recognised_by_its_model_card(minilm_checkpoint: Path):
    # The case: `akidb-embed convert <folder named model>` must still be the
    # catalog's all-minilm-l6-v2, so the server answers to its catalog names.
    rules = resolve_rules(minilm_checkpoint, str(minilm_checkpoint), False)
    assert minilm_checkpoint.name == "model"
    assert rules.name == "all-minilm-l6-v2" and rules.catalog_name == "all-minilm-l6-v2"
    assert rules.family == "sentence-transformers" and rules.task == "embed"


def test_unknown_model_uses_sentence_transformers_config(minilm_checkpoint: Path, tmp_path: Path):
    local = tmp_path / "some-minilm"
    shutil.copytree(minilm_checkpoint, local)
    (local / "README.md").write_text("# My own fine-tune\n")
    rules = resolve_rules(local, str(local), False)
    assert rules.name == "some-minilm" and rules.catalog_name is None
    assert rules.family == "custom-bert"
    # from 1_Pooling/config.json, modules.json (Normalize) and sentence_bert_config.json
    assert (rules.pooling, rules.normalize, rules.max_length) == ("mean", True, 256)


def test_explicit_options_win(minilm_checkpoint: Path):
    rules = resolve_rules(
        minilm_checkpoint,
        str(minilm_checkpoint),
        False,
        name="My Model",
        family="e5",
        pooling="cls",
        normalize=False,
        max_length=128,
        matryoshka_dimensions=[128, 64, 128],
    )
    assert rules.name == "my-model"
    assert (rules.family, rules.pooling, rules.normalize, rules.max_length) == (
        "e5",
        "cls",
        False,
        128,
    )
    assert rules.query_prefix == "query: " and rules.document_prefix == "passage: "
    assert rules.matryoshka_dimensions == (64, 128)


@pytest.fixture
def plain_bert(tmp_path: Path) -> Path:
    build_tiny_bert(tmp_path)
    return tmp_path


def test_unknown_model_without_pooling_is_refused(plain_bert: Path):
    with pytest.raises(RulesError, match="pass --family or --pooling"):
        resolve_rules(plain_bert, str(plain_bert), False)


def test_family_rules_and_hidden_size_from_config(plain_bert: Path):
    rules = resolve_rules(plain_bert, str(plain_bert), False, family="bge")
    assert (rules.pooling, rules.dimension, rules.max_length) == ("cls", 32, 512)


def test_catalog_dimension_mismatch(plain_bert: Path):
    with pytest.raises(RulesError, match=r"dimension 384 but the checkpoint .* hidden_size 32"):
        resolve_rules(plain_bert, str(plain_bert), False, name="bge-small-en-v1.5")


def test_family_architecture_mismatch(plain_bert: Path):
    with pytest.raises(RulesError, match="family qwen3-embedding is for qwen3 models"):
        resolve_rules(plain_bert, str(plain_bert), False, family="qwen3-embedding")


def test_bad_max_length_and_matryoshka(plain_bert: Path):
    with pytest.raises(RulesError, match="exceeds the model's max_position_embeddings 512"):
        resolve_rules(plain_bert, str(plain_bert), False, family="bge", max_length=4096)
    with pytest.raises(RulesError, match=r"matryoshka dimensions \[64\] are outside 1..32"):
        resolve_rules(plain_bert, str(plain_bert), False, family="bge", matryoshka_dimensions=[64])


def test_unknown_family(plain_bert: Path):
    with pytest.raises(RulesError, match="unknown family 'nope'"):
        resolve_rules(plain_bert, str(plain_bert), False, family="nope")


def test_repo_id_detection(tmp_path: Path):
    assert looks_like_repo_id("BAAI/bge-small-en-v1.5")
    assert looks_like_repo_id("gpt2")
    assert not looks_like_repo_id("/abs/path")
    assert not looks_like_repo_id("./rel/path")
    assert not looks_like_repo_id("a/b/c")
    assert not looks_like_repo_id(str(tmp_path))


def test_checkpoint_checks(plain_bert: Path, tmp_path: Path):
    check_checkpoint_dir(plain_bert)
    broken = tmp_path / "broken"
    shutil.copytree(plain_bert, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="has no model weights"):
        check_checkpoint_dir(broken)
    shutil.copytree(plain_bert, tmp_path / "notok")
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / "notok" / name).unlink()
    with pytest.raises(SourceError, match="has no tokenizer"):
        check_checkpoint_dir(tmp_path / "notok")
    with pytest.raises(SourceError, match="does not exist"):
        resolve_source(str(tmp_path / "missing" / "dir"))


def test_invalid_config_json(plain_bert: Path):
    (plain_bert / "config.json").write_text("{not json")
    with pytest.raises(RulesError, match="is not valid JSON"):
        resolve_rules(plain_bert, str(plain_bert), False, family="bge")


def test_tiny_checkpoints_are_deterministic(tmp_path: Path, tiny_bert_checkpoint: Path):
    build_tiny_bert(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == (
        tiny_bert_checkpoint / "model.safetensors"
    ).read_bytes()
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)
