"""`akidb-embed serve` as a real subprocess: start-up failures, logs, SIGTERM drain."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from akidb_embed.model_server.runner import ServerProcess, free_port

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "akidb_embed", "serve", *args, "--port", str(free_port())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_missing_artifact_exits_nonzero_with_message(tmp_path: Path) -> None:
    res = run_cli(str(tmp_path / "nope"))
    assert res.returncode == 1
    assert f"artifact directory {tmp_path / 'nope'} does not exist" in res.stderr
    res = run_cli(str(tmp_path))  # a directory, but not an artifact
    assert res.returncode == 1
    assert "manifest.json not found" in res.stderr


def test_corrupt_artifact_exits_nonzero_with_message(tmp_path: Path, tiny_bert_artifact) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_bert_artifact, art)
    model = art / "model.ort-cpu.onnx"  # the graph a CPU server reads
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    res = run_cli(str(art))
    assert res.returncode == 1
    assert re.search(r"artifact file .*model\.ort-cpu\.onnx is corrupt: digest sha256:", res.stderr)

    (art / "manifest.json").write_text("{ not json")
    res = run_cli(str(art))
    assert res.returncode == 1 and "is not valid JSON" in res.stderr

    shutil.rmtree(art)
    shutil.copytree(tiny_bert_artifact, art)
    (art / "tokenizer.json").unlink()
    res = run_cli(str(art))
    assert res.returncode == 1 and "tokenizer.json is missing" in res.stderr


def test_bad_flags_are_refused() -> None:
    res = run_cli("/tmp", "--max-batch-size", "0")
    assert res.returncode == 2 and "must be at least 1" in res.stderr


async def test_sigterm_drains_in_flight_requests(minilm_artifact: Path) -> None:
    proc = ServerProcess(
        minilm_artifact,
        ["--providers", "TensorRT,CUDA,CPU", "--max-batch-size", "8", "--threads", "2"],
    )
    await asyncio.get_running_loop().run_in_executor(None, proc.start)
    try:
        log = proc.stderr_text()
        assert "TensorrtExecutionProvider not available in this onnxruntime build" in log
        assert "falling back to CPUExecutionProvider" in log
        assert re.search(r"loaded all-minilm-l6-v2 from .* in [0-9.]+s", log)
        assert re.search(r"warm-up took [0-9.]+s", log)
        assert "ready: model all-minilm-l6-v2, provider CPUExecutionProvider" in log

        texts = [
            f"request text number {i} " + "lorem ipsum dolor sit amet " * 40 for i in range(24)
        ]
        async with aiohttp.ClientSession(proc.url) as http:

            async def embed() -> tuple[int, dict]:
                async with http.post("/embed", json={"texts": texts}) as resp:
                    return resp.status, await resp.json()

            tasks = [asyncio.create_task(embed()) for _ in range(4)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # wait until work is really in flight
                async with http.get("/metrics") as resp:
                    m = re.search(
                        r"^akidb_model_server_in_flight_requests ([0-9.]+)$",
                        await resp.text(),
                        re.M,
                    )
                if m and float(m.group(1)) >= 1:
                    break
                await asyncio.sleep(0.05)
            t_term = time.monotonic()
            proc.proc.send_signal(15)  # type: ignore[union-attr]
            await asyncio.sleep(0.3)
            async with http.get("/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "draining"
            async with http.post("/embed", json={"texts": ["late"]}) as resp:
                assert resp.status == 503 and "Retry-After" in resp.headers
            results = await asyncio.gather(*tasks)
        for status, body in results:
            assert status == 200
            assert len(body["embeddings"]) == len(texts)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.proc.wait, 60)  # type: ignore[union-attr]
        assert code == 0
        assert time.monotonic() - t_term < 60
        log = proc.stderr_text()
        assert "draining:" in log and "drained in" in log
    finally:
        proc.kill()


def test_help_lists_flags_and_cli_imports_nothing_heavy() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "akidb_embed", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0
    for flag in ("--providers", "--max-batch-size", "--max-batch-tokens", "--threads", "--name"):
        assert flag in res.stdout
    probe = (
        "import sys, akidb_embed.model_server.cli; "
        "heavy = {'onnxruntime', 'numpy', 'aiohttp', 'tokenizers'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
