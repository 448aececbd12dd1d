"""GPU check of the model server's execution-provider path (run on a CUDA machine).

What it proves, in one run on one machine:
- the engine asked for TensorRT, CUDA, CPU (in that order) gets the best provider this
  onnxruntime build and machine can run, and logs why it fell back;
- embeddings computed on the GPU (fp16 artifact) match the CPU fp32 reference embeddings
  computed beforehand on the development machine (``--reference``);
- raw ONNX Runtime on the GPU vs on the CPU (same artifact, same texts), batch 1 and 32;
- the model server (its own process) over HTTP on the GPU at concurrency 1 and 32
  against raw ORT on the GPU: what the HTTP layer and micro-batching cost or gain.

    python -m bench.gpu_check --artifact DIR --reference ref.json --out result.json
    python -m bench.gpu_check --make-reference --artifact FP32_DIR --out ref.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors so that similar meanings land close together.",
    "Jetson Thor is an edge computer for robotics with a Blackwell GPU.",
    "Kubernetes schedules pods onto nodes according to their requests and selectors.",
    "¿Dónde está la biblioteca? Está cerca del río.",
    "数据库 向量 检索",
    " ".join(["a long text that repeats itself to make the sequence longer"] * 12),
    "short",
    "ONNX Runtime picks an execution provider: TensorRT, CUDA or the CPU.",
    "Least recently used models are evicted first when the node is full.",
    "The gateway holds a request while a cold model starts.",
]


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


def _time_engine(engine: Any, texts: list[str], batch: int, rounds: int) -> dict[str, Any]:
    seqs = engine.tokenize(texts)
    batches = [seqs[i : i + batch] for i in range(0, len(seqs), batch)]
    engine.run(batches[0])  # warm this shape
    samples: list[float] = []
    start = time.perf_counter()
    done = 0
    for _ in range(rounds):
        for b in batches:
            t0 = time.perf_counter()
            engine.run(b)
            samples.append(time.perf_counter() - t0)
            done += len(b)
    wall = time.perf_counter() - start
    return {"batch": batch, "texts_per_s": done / wall, **_percentiles(samples)}


async def _http_load(url: str, texts: list[str], concurrency: int, total: int) -> dict[str, Any]:
    import aiohttp

    samples: list[float] = []
    counter = iter(range(total))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for i in counter:
                body = {"input": texts[i % len(texts)], "model": "all-minilm-l6-v2"}
                t0 = time.perf_counter()
                async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")
                samples.append(time.perf_counter() - t0)

        # warm-up
        async with session.post(f"{url}/v1/embeddings", json={"input": "warm"}) as resp:
            await resp.read()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"concurrency": concurrency, "texts_per_s": total / wall, **_percentiles(samples)}


def make_reference(artifact: Path, out: Path) -> None:
    from akidb_embed.model_server.engine import Engine

    engine = Engine(artifact, providers="CPU")
    emb = engine.embed(TEXTS)
    out.write_text(json.dumps({"texts": TEXTS, "embeddings": emb.tolist()}))
    print(f"wrote {out} ({len(TEXTS)} reference embeddings from {artifact})")


def gpu_check(artifact: Path, reference: Path, out: Path, rounds: int) -> dict[str, Any]:
    import onnxruntime as ort

    from akidb_embed.model_server.engine import Engine
    from akidb_embed.model_server.runner import ServerProcess

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.node(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
    try:
        result["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        result["gpu"] = f"nvidia-smi failed: {exc}"

    t0 = time.perf_counter()
    gpu = Engine(artifact, providers="TensorRT,CUDA,CPU", max_batch_size=32)
    result["gpu_engine"] = {
        "load_s": time.perf_counter() - t0,
        "warmup_s": gpu.warmup(),
        "providers": list(gpu.providers),
        "summary": gpu.summary(),
    }
    ref = json.loads(reference.read_text())
    got = gpu.embed(ref["texts"])
    want = np.asarray(ref["embeddings"], dtype=np.float32)
    cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    result["parity_vs_cpu_fp32"] = {"min_cosine": float(cos.min()), "mean": float(cos.mean())}

    texts = (TEXTS * 32)[:256]
    cpu = Engine(artifact, providers="CPU")
    cpu.warmup()
    result["raw"] = {
        "gpu_b1": _time_engine(gpu, texts[:64], 1, rounds),
        "gpu_b32": _time_engine(gpu, texts, 32, rounds),
        "cpu_b1": _time_engine(cpu, texts[:64], 1, 1),
        "cpu_b32": _time_engine(cpu, texts, 32, 1),
    }
    for name, batch in (("server", 32), ("server_nobatch", 1)):
        # The server in its own process, as deployed (the client here has its own GIL).
        # No self-measurement: it would share the GPU with the first timed requests.
        flags = ["--providers", "TensorRT,CUDA,CPU", "--max-batch-size", str(batch)]
        flags.append("--no-self-benchmark")
        with ServerProcess(artifact, flags) as server:
            result[name] = {
                "c1": asyncio.run(_http_load(server.url, TEXTS, 1, 200)),
                "c32": asyncio.run(_http_load(server.url, TEXTS, 32, 1024)),
            }
    raw, srv = result["raw"], result["server"]
    result["ratios"] = {
        "gpu_over_cpu_b32_throughput": raw["gpu_b32"]["texts_per_s"]
        / raw["cpu_b32"]["texts_per_s"],
        "server_c32_over_raw_gpu_b32": srv["c32"]["texts_per_s"] / raw["gpu_b32"]["texts_per_s"],
        "server_c32_batching_gain": srv["c32"]["texts_per_s"]
        / result["server_nobatch"]["c32"]["texts_per_s"],
        "server_c1_p50_overhead_ms": srv["c1"]["p50_ms"] - raw["gpu_b1"]["p50_ms"],
    }
    out.write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--make-reference", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.make_reference:
        make_reference(args.artifact, args.out)
        return 0
    if args.reference is None:
        parser.error("--reference is required for the GPU check")
    result = gpu_check(args.artifact, args.reference, args.out, args.rounds)
    print(json.dumps({k: result[k] for k in ("gpu", "parity_vs_cpu_fp32", "ratios")}, indent=2))
    for k in ("raw", "server", "server_nobatch"):
        print(k, json.dumps(result[k]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
