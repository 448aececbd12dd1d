"""Registry parsing and name resolution; config parsing and the CLI's env variables."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from akidb_embed.gateway import cli
from akidb_embed.gateway.config import load_api_keys
from akidb_embed.gateway.registry import Registry
from akidb_embed.units import memory_bytes as parse_size
from akidb_embed.units import parse_duration
from tests.gateway.fakes import model_obj, pod_obj


def test_names_resolve_by_resource_name_and_catalog_alias_of_the_source() -> None:
    reg = Registry()
    reg.replace_models(
        [
            model_obj("minilm", source={"repo": "sentence-transformers/all-MiniLM-L6-v2"}),
            model_obj("e5-small-v2", source={"path": "/models/e5"}),
            model_obj("mine", source={"repo": "acme/custom-embedder"}),
        ]
    )
    assert reg.resolve("minilm") == "minilm"
    assert reg.resolve("all-MiniLM-L6-v2") == "minilm"
    assert reg.resolve("all-minilm-l6-v2") == "minilm"
    assert reg.resolve("SENTENCE-TRANSFORMERS/all-minilm-l6-v2") == "minilm"
    assert reg.resolve("intfloat/e5-small-v2") == "e5-small-v2"  # by its catalog name
    assert reg.resolve("acme/custom-embedder") == "mine"
    assert reg.resolve("bge-small-en-v1.5") is None
    reg.delete_model("minilm")
    assert reg.resolve("all-MiniLM-L6-v2") is None


def test_pod_state_from_the_pod_object() -> None:
    reg = Registry()
    reg.upsert_pod(pod_obj("a", "m", 9001))
    reg.upsert_pod(pod_obj("b", "m", 9002, ready=False))
    reg.upsert_pod(pod_obj("c", "m", 9003, terminating=True))
    reg.upsert_pod({"metadata": {"name": "no-label", "labels": {}}, "status": {}})
    assert [p.name for p in reg.pods("m")] == ["a", "b", "c"]
    assert [p.name for p in reg.ready_pods("m")] == ["a"]
    assert reg.pick_ready("m").base_url == "http://127.0.0.1:9001"  # type: ignore[union-attr]
    reg.upsert_pod(pod_obj("v6", "n", 9004, ip="fd00:10:244::7"))
    assert reg.pick_ready("n").base_url == "http://[fd00:10:244::7]:9004"  # type: ignore[union-attr]
    assert str(reg.pick_ready("n").url("/embed")) == "http://[fd00:10:244::7]:9004/embed"  # type: ignore[union-attr]
    assert [p.name for p in reg.probe_candidates("m")] == ["b"]
    reg.mark_probed_ready("b")
    assert {p.name for p in reg.ready_pods("m")} == {"a", "b"}
    for _ in range(3):
        reg.call_started("a")
    assert reg.in_flight("a") == 3
    assert reg.pick_ready("m").name == "b"  # type: ignore[union-attr]
    assert reg.pick_ready("m", avoid=frozenset({"b"})).name == "a"  # type: ignore[union-attr]
    for _ in range(3):
        reg.call_ended("a")
    assert reg.in_flight("a") == 0
    reg.mark_suspect("b")
    assert [p.name for p in reg.ready_pods("m")] == ["a"]
    assert reg.probe_candidates("m") == []  # quarantined
    reg.delete_pod("a")
    assert reg.pick_ready("m") is None


async def test_changes_wake_waiters_of_that_model_only() -> None:
    reg = Registry()
    a, b = reg.changed("a"), reg.changed("b")
    reg.upsert_pod(pod_obj("p", "a", 1))
    assert a.is_set() and not b.is_set()
    assert not reg.changed("a").is_set()  # a fresh event for the next change


@pytest.mark.parametrize(
    ("text", "seconds"), [("120s", 120.0), ("2m", 120.0), ("50ms", 0.05), ("1.5", 1.5)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_size_and_bad_values() -> None:
    assert parse_size("8Mi") == 8 * 1024 * 1024
    assert parse_size("1M") == 1_000_000
    assert parse_size("65536") == 65536
    for bad in ("ten", "-1s", "-1", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("lots")


def test_api_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\nkey-1\n\n  key-2  \n")
    assert load_api_keys(path) == frozenset({"key-1", "key-2"})
    path.write_text("\n# none\n")
    with pytest.raises(ValueError, match="no keys"):
        load_api_keys(path)


def test_cli_flags_come_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k\n")
    monkeypatch.setenv("AKIDB_GATEWAY_COLD_START_TIMEOUT", "2m")
    monkeypatch.setenv("AKIDB_GATEWAY_MAX_WAITING_PER_MODEL", "7")
    monkeypatch.setenv("AKIDB_GATEWAY_API_KEYS_FILE", str(keys))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["gateway", "--port", "9000", "--max-body-bytes", "1Mi"])
    config = cli.build_config(args)
    assert config.cold_start_timeout == 120.0
    assert config.max_waiting_per_model == 7
    assert config.port == 9000
    assert config.max_body_bytes == 1024 * 1024
    assert config.api_keys == frozenset({"k"})
    assert config.namespace == "akidb"
