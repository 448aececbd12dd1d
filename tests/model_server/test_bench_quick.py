"""The model-server benchmark runs end to end (--quick, tiny model) and writes its report.

Checks the report's shape, not the numbers (numbers come from `python -m bench.model_server`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_json_and_png(
    tmp_path: Path, tiny_bert_artifact: Path, tiny_bert_checkpoint: Path
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "bench.model_server",
        "--quick",
        "--texts",
        "32",
        "--artifact",
        str(tiny_bert_artifact),
        "--checkpoint",
        str(tiny_bert_checkpoint),
        "--no-infinity",
        "--out-dir",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| server_c32 |" in res.stdout and "server_c32_vs_raw_ort_b32" in res.stdout
    data = json.loads((tmp_path / "model_server.json").read_text())
    assert set(data["machine"]) >= {"cpu_model", "cores", "date"}
    assert data["config"]["model"] == "tiny-bert" and data["config"]["texts"] == 32
    for name in (
        "raw_ort_b1",
        "raw_ort_b32",
        "server_c1",
        "server_c32",
        "sentence_transformers_b32",
    ):
        row = data["results"][name]
        assert set(row) >= {"throughput_texts_s", "p50_ms", "p95_ms", "p99_ms"}, name
        assert row["texts"] == 32
    assert data["results"]["infinity_c32"]["status"] == "skipped"
    assert set(data["ratios"]) >= {
        "server_c32_vs_raw_ort_b32",
        "server_c32_vs_sentence_transformers",
        "server_c1_p50_overhead_ms_vs_raw_ort_b1",
    }
    assert data["server_memory"]["rss_mib"] > 0
    assert (tmp_path / "model_server.png").stat().st_size > 1000
