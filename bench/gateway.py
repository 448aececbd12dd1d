"""Warm-path latency: through the gateway vs straight to the model server, one run.

Starts a real model server (`akidb-embed serve`, MiniLM fp32 on the CPU) and a real
gateway process (the gateway app with a static discovery source naming that server:
no Kubernetes needed), then sends the same one-short-text requests both ways, in
interleaved rounds, at concurrency 1 and 32. Prints p50/p95/p99 and the gateway's
overhead (difference of the two, same run, same machine) and writes
bench/results/gateway.json.

    .venv/bin/python bench/gateway.py [--artifact DIR] [--requests 2000]

Targets: gateway overhead <= 1 ms at p50; warm p95 through the gateway <= 5 ms
(concurrency 1, one short text).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gateway.json"
TEXT = "What is the capital of France?"
MODEL = "all-minilm-l6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StaticBackend:
    """Discovery source with one fixed, ready model-server pod."""

    def __init__(self, model: str, port: int) -> None:
        self.model, self.port = model, port

    async def run(self, registry: Any) -> None:
        registry.replace_models(
            [{"metadata": {"name": self.model}, "spec": {}, "status": {"phase": "Ready"}}]
        )
        registry.replace_pods(
            [
                {
                    "metadata": {
                        "name": f"{self.model}-0",
                        "labels": {"akidb.io/model": self.model},
                    },
                    "spec": {
                        "containers": [{"ports": [{"name": "http", "containerPort": self.port}]}]
                    },
                    "status": {
                        "phase": "Running",
                        "podIP": "127.0.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            ]
        )
        registry.mark_synced("models")
        registry.mark_synced("pods")
        await asyncio.Event().wait()

    async def patch_status(self, model: str, fields: dict[str, Any]) -> None:
        return None


def run_gateway(port: int, upstream_port: int) -> None:
    """Child process: the real gateway app in front of the static pod."""
    from akidb_embed.gateway.app import serve
    from akidb_embed.gateway.config import GatewayConfig

    config = GatewayConfig(host="127.0.0.1", port=port, default_model=MODEL)
    asyncio.run(serve(config, StaticBackend(MODEL, upstream_port)))


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: process exited with {proc.returncode}")
            try:
                async with session.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout}s")


async def measure(
    session: aiohttp.ClientSession, url: str, n: int, concurrency: int
) -> list[float]:
    body = json.dumps({"texts": [TEXT]}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"{url}: HTTP {resp.status}")
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 50), 3),
        "p95_ms": round(pct(values, 95), 3),
        "p99_ms": round(pct(values, 99), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    artifact = args.artifact
    if artifact is None:
        sys.path.insert(0, str(REPO))
        from tests.fixtures.models import cached_artifact, minilm_path

        artifact = cached_artifact(minilm_path(), MODEL)
    server_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "akidb_embed",
            "--log-level",
            "WARNING",
            "serve",
            str(artifact),
            "--host",
            "127.0.0.1",
            "--port",
            str(server_port),
            "--threads",
            str(args.threads),
        ],
        env=env,
    )
    gateway = subprocess.Popen(
        [sys.executable, __file__, "--serve-gateway", str(gateway_port), str(server_port)],
        env=env,
    )
    direct_url = f"http://127.0.0.1:{server_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    try:
        await wait_ready(direct_url, server)
        await wait_ready(gateway_url, gateway)
        results: dict[str, Any] = {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for concurrency in (1, 32):
                n = args.requests if concurrency == 1 else args.requests * 2
                direct: list[float] = []
                via: list[float] = []
                await measure(session, direct_url + "/embed", 100, concurrency)  # warm-up
                await measure(session, gateway_url + "/api/v1/embed", 100, concurrency)
                rounds = 5
                for _ in range(rounds):  # interleaved, so drift hits both alike
                    direct += await measure(
                        session, direct_url + "/embed", n // rounds, concurrency
                    )
                    via += await measure(
                        session, gateway_url + "/api/v1/embed", n // rounds, concurrency
                    )
                d, g = summary(direct), summary(via)
                results[f"concurrency_{concurrency}"] = {
                    "direct": d,
                    "gateway": g,
                    "overhead_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3),
                    "overhead_p95_ms": round(g["p95_ms"] - d["p95_ms"], 3),
                    "ratio_p50": round(g["p50_ms"] / d["p50_ms"], 3),
                }
        return results
    finally:
        for proc in (gateway, server):
            proc.terminate()
        for proc in (gateway, server):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=None, help="MiniLM artifact dir")
    parser.add_argument("--requests", type=int, default=2000, help="requests per path at c=1")
    parser.add_argument("--threads", type=int, default=1, help="model server ORT threads")
    parser.add_argument(
        "--serve-gateway", nargs=2, type=int, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_gateway:
        run_gateway(*args.serve_gateway)
        return 0
    results = asyncio.run(bench(args))
    c1 = results["concurrency_1"]
    targets = {
        "overhead_p50_ms_le_1": c1["overhead_p50_ms"] <= 1.0,
        "gateway_p95_ms_le_5": c1["gateway"]["p95_ms"] <= 5.0,
    }
    report = {
        "benchmark": "gateway warm path, one short text, MiniLM fp32 CPU",
        "text": TEXT,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "results": results,
        "targets_met": targets,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'conc':>4} {'path':<8} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for key, row in results.items():
        conc = key.split("_")[1]
        for path in ("direct", "gateway"):
            s = row[path]
            print(
                f"{conc:>4} {path:<8} {s['n']:>5} {s['p50_ms']:>8.3f} {s['p95_ms']:>8.3f} "
                f"{s['p99_ms']:>8.3f}"
            )
        print(
            f"{conc:>4} overhead p50 {row['overhead_p50_ms']:+.3f} ms, "
            f"p95 {row['overhead_p95_ms']:+.3f} ms, ratio p50 {row['ratio_p50']:.2f}x"
        )
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
