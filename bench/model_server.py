"""Model-server throughput and latency against its limits and the usual alternatives.

One run, one machine, the same texts for every system:

- ``server_c1`` / ``server_c32``: ``akidb-embed serve`` in a separate process, over
  HTTP (``POST /v1/embeddings``, one text per request) from a real aiohttp client, at
  concurrency 1 and 32. ``server_c32_nobatch`` (full run only): the same with
  ``--max-batch-size 1``, to show what micro-batching buys.
- ``raw_ort_b1`` / ``raw_ort_b32``: ONNX Runtime in-process on the same artifact
  (tokenizers + session.run + numpy pooling, nothing else): the limit.
- ``sentence_transformers_b32``: ``SentenceTransformer(checkpoint).encode`` on PyTorch
  (CPU), batch size 32.
- ``infinity_c32``: infinity-emb's server (torch engine) over HTTP at concurrency 32,
  when it can be imported (``--infinity-pythonpath``); else "not installed: <reason>".

Ratios (targets): server c32 / raw ORT b32 throughput (>= 0.9); server c32 /
sentence-transformers throughput (>= 2); server c1 p50 - raw ORT b1 p50 (<= 1 ms).
Writes bench/results/model_server.json and .png and prints a markdown table.

    .venv/bin/python -m bench.model_server [--quick] [--artifact DIR --checkpoint DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
CONCURRENCY = 32
_VOCAB = """
the of and to in is for on that with as by this be are from at or an it was which
model embedding vector search query document retrieval semantic index server batch
token latency throughput kubernetes operator gateway jetson thor tensor runtime onnx
memory cache request response network edge device accuracy language text sentence
paragraph similarity cosine dimension pooling normalize precision quantization graph
"""
WORDS = tuple(_VOCAB.split())


# -- inputs and statistics ---------------------------------------------------------


def make_texts(n: int, seed: int = 7) -> list[str]:
    """Deterministic sentences of 4..40 words (search queries to short passages)."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        k = int(rng.integers(4, 41))
        words = rng.choice(WORDS, size=k)
        texts.append(f"{i}: " + " ".join(words).capitalize() + ".")
    return texts


def summarize(latencies_s: list[float], texts: int, wall_s: float) -> dict[str, Any]:
    lat = np.asarray(latencies_s) * 1000.0
    return {
        "texts": texts,
        "calls": len(latencies_s),
        "wall_s": round(wall_s, 4),
        "throughput_texts_s": round(texts / wall_s, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p95_ms": round(float(np.percentile(lat, 95)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu_model": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "logical_cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def rss_mib(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mib": out.get("VmRSS", 0.0), "peak_rss_mib": out.get("VmHWM", 0.0)}


# -- raw ONNX Runtime (the limit) ---------------------------------------------------


class RawOrt:
    """The bare minimum to embed with the artifact: tokenizers + ORT + numpy pooling."""

    def __init__(self, artifact: Path, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from akidb_embed.artifact import ArtifactManifest

        self.manifest = ArtifactManifest.load(artifact)
        self.tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))
        self.tok.enable_truncation(self.manifest.max_length)
        pad_id = self.tok.token_to_id("[PAD]") or 0
        self.tok.enable_padding(direction=self.manifest.padding_side, pad_id=pad_id)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the server
        # The graph the server runs on a CPU (the saved CPU graph when there is one), so
        # the overhead rows compare like with like.
        graph = self.manifest.cpu_model or "model.onnx"
        self.session = ort.InferenceSession(
            str(artifact / graph), so, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: list[str]) -> np.ndarray:
        from akidb_embed.model_server.pooling import pool, truncate_dims

        encs = self.tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self.session.run([self.manifest.output], feed)
        return truncate_dims(pool(hidden, mask, self.manifest.pooling), None, True)


def time_batches(
    fn: Callable[[list[str]], Any], texts: list[str], batch: int
) -> tuple[list[float], float]:
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        t = time.perf_counter()
        fn(texts[i : i + batch])
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - t0


def bench_batches(fn: Callable[[list[str]], Any], texts: list[str], batch: int) -> dict[str, Any]:
    fn(texts[:batch])  # warm-up
    lat, wall = time_batches(fn, texts, batch)
    return summarize(lat, len(texts), wall)


class Acc:
    """Latencies and wall time of one system, accumulated over interleaved rounds."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.wall = 0.0
        self.texts = 0

    def add(self, lat_wall: tuple[list[float], float], texts: int) -> None:
        self.lat += lat_wall[0]
        self.wall += lat_wall[1]
        self.texts += texts

    def summary(self) -> dict[str, Any]:
        return summarize(self.lat, self.texts, self.wall)


# -- HTTP load ----------------------------------------------------------------------


async def http_load(
    url: str,
    model: str,
    texts: list[str],
    concurrency: int,
    warmup: int = 16,
    path: str = "/v1/embeddings",
    raw: bool = False,
) -> Any:
    """One text per POST ``path`` (OpenAI shape); ``concurrency`` workers share the texts.

    Returns the summary, or with ``raw`` the (latencies, wall seconds) pair.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:

        async def one(text: str) -> float:
            t = time.perf_counter()
            async with http.post(path, json={"input": [text], "model": model}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}: {body[:300]!r}")
            return time.perf_counter() - t

        await asyncio.gather(*(one(t) for t in texts[:warmup]))
        queue = list(reversed(texts))
        lat: list[float] = []

        async def worker() -> None:
            while queue:
                lat.append(await one(queue.pop()))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        return (lat, wall) if raw else summarize(lat, len(texts), wall)


def wait_http(url: str, path: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + path, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}{path} not ready within {timeout}s")


def bench_interleaved(
    artifact: Path,
    raw: RawOrt,
    texts: list[str],
    threads: int,
    rounds: int,
    baseline: tuple[str, Path] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw ORT b1/b32 and the server c1/c32, alternated round by round.

    The machine is shared and noisy; alternating the systems in short rounds exposes
    each one to the same background load, so the ratios mean something. ``baseline``
    (PYTHONPATH, artifact): a second server from other code (e.g. main before a change),
    measured in the same rounds as ``baseline_server_c1`` / ``baseline_server_c32``.
    """
    from akidb_embed.model_server.runner import ServerProcess

    names = ["raw_ort_b1", "server_c1", "raw_ort_b32", "server_c32"]
    if baseline is not None:
        names += ["baseline_server_c1", "baseline_server_c32"]
    accs = {k: Acc() for k in names}
    chunks = [texts[i::rounds] for i in range(rounds)]
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(ServerProcess(artifact, ["--threads", str(threads)]))
        servers = {"server": srv}
        if baseline is not None:
            env = {"PYTHONPATH": baseline[0]}
            servers["baseline_server"] = stack.enter_context(
                ServerProcess(baseline[1], ["--threads", str(threads)], env=env)
            )
        for s in servers.values():
            wait_self_benchmark(s)
        info = srv.info()
        model = info["model"]["name"]
        raw.embed(texts[:CONCURRENCY])
        for s in servers.values():
            asyncio.run(http_load(s.url, model, texts[:CONCURRENCY], CONCURRENCY, raw=True))
        for i, chunk in enumerate(chunks):
            n = len(chunk)
            # The two servers swap places every round: whichever runs right after the
            # raw rows measured ~0.3 ms slower at c1 with identical code.
            order = list(servers.items()) if i % 2 == 0 else list(servers.items())[::-1]
            accs["raw_ort_b1"].add(time_batches(raw.embed, chunk, 1), n)
            for key, s in order:
                accs[f"{key}_c1"].add(
                    asyncio.run(http_load(s.url, model, chunk, 1, warmup=0, raw=True)), n
                )
            accs["raw_ort_b32"].add(time_batches(raw.embed, chunk, CONCURRENCY), n)
            for key, s in order:
                accs[f"{key}_c32"].add(
                    asyncio.run(http_load(s.url, model, chunk, CONCURRENCY, warmup=0, raw=True)),
                    n,
                )
        mem: dict[str, Any] = dict(rss_mib(srv.pid))
        mem["info"] = {
            "providers": info.get("providers", {}).get("in_use"),
            "load_s": info.get("load_s"),
            "warmup_s": info.get("warmup_s"),
        }
    return {k: v.summary() for k, v in accs.items()}, mem


def wait_self_benchmark(srv: Any, timeout: float = 60.0) -> None:
    """Until the server's self-measurement after ready is over: it runs ORT on the
    inference thread between requests for about a second, and measured beside it (or
    beside another server's) a c1 row gains milliseconds that are not the server's."""
    deadline = time.monotonic() + timeout
    while srv.info().get("self_benchmark") in ("pending", "running"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{srv.url}: self-benchmark still running after {timeout}s")
        time.sleep(0.1)


def bench_server(
    artifact: Path, texts: list[str], threads: int, extra: list[str], concurrency: int
) -> dict[str, Any]:
    from akidb_embed.model_server.runner import ServerProcess

    with ServerProcess(artifact, ["--threads", str(threads), *extra]) as srv:
        wait_self_benchmark(srv)
        model = srv.info()["model"]["name"]
        return dict(asyncio.run(http_load(srv.url, model, texts, concurrency)))


def bench_infinity(
    checkpoint: Path, texts: list[str], threads: int, pythonpath: str | None
) -> dict[str, Any]:
    from akidb_embed.model_server.runner import free_port

    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    probe = subprocess.run(
        [sys.executable, "-c", "import infinity_emb; print(infinity_emb.__version__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return {"status": f"not installed: {reason}"}
    version = probe.stdout.strip()
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "from infinity_emb.cli import cli; cli()",
        "v2",
        "--model-id",
        str(checkpoint),
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--batch-size",
        str(CONCURRENCY),
        "--port",
        str(port),
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url, "/health", proc, 180)
            result = asyncio.run(
                http_load(url, str(checkpoint), texts, CONCURRENCY, path="/embeddings")
            )
            result.update(rss_mib(proc.pid))
            result["status"] = f"infinity-emb {version}, torch engine, CPU"
            return result
        except Exception as exc:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-400:]
            return {"status": f"failed: {exc}; log tail: {tail}"}
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# -- report -------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


def build_report(res: dict[str, Any]) -> dict[str, Any]:
    r = res["results"]
    tput = {k: v.get("throughput_texts_s") for k, v in r.items() if isinstance(v, dict)}
    c32_vs_raw = ratio(tput.get("server_c32"), tput.get("raw_ort_b32"))
    vs_st = ratio(tput.get("server_c32"), tput.get("sentence_transformers_b32"))
    overhead = None
    if "p50_ms" in r.get("server_c1", {}) and "p50_ms" in r.get("raw_ort_b1", {}):
        overhead = round(r["server_c1"]["p50_ms"] - r["raw_ort_b1"]["p50_ms"], 3)
    # Targets of issue 11 (int8: server int8 vs sentence-transformers fp32 >= 2.5).
    st_goal = 2.5 if res.get("config", {}).get("precision") == "int8" else 1.5
    ratios: dict[str, Any] = {
        "server_c32_vs_raw_ort_b32": {"value": c32_vs_raw, "target": ">= 0.9"},
        "server_c32_vs_sentence_transformers": {"value": vs_st, "target": f">= {st_goal}"},
        "server_c1_p50_overhead_ms_vs_raw_ort_b1": {"value": overhead, "target": "<= 0.3"},
    }
    ratios["server_c32_vs_raw_ort_b32"]["met"] = c32_vs_raw is not None and c32_vs_raw >= 0.9
    ratios["server_c32_vs_sentence_transformers"]["met"] = vs_st is not None and vs_st >= st_goal
    ratios["server_c1_p50_overhead_ms_vs_raw_ort_b1"]["met"] = (
        overhead is not None and overhead <= 0.3
    )
    if overhead is not None and "p50_ms" in r.get("http_floor_c1", {}):
        # The part of the overhead that is the server's own code (tokenize, queue,
        # pooling, JSON), not the HTTP round trip every server pays.
        ratios["server_c1_p50_overhead_ms_beyond_http_floor"] = {
            "value": round(overhead - r["http_floor_c1"]["p50_ms"], 3),
            "target": "informational (the HTTP floor's c1 p50, same run, subtracted)",
        }
    if "server_c32_nobatch" in r:
        ratios["batching_gain_c32"] = {
            "value": ratio(tput.get("server_c32"), tput.get("server_c32_nobatch")),
            "target": "> 1 (micro-batching helps)",
        }
    if "throughput_texts_s" in r.get("infinity_c32", {}):
        ratios["server_c32_vs_infinity_c32"] = {
            "value": ratio(tput.get("server_c32"), tput.get("infinity_c32")),
            "target": "informational",
        }
    if "baseline_server_c32" in r:
        ratios["server_c32_vs_baseline_server_c32"] = {
            "value": ratio(tput.get("server_c32"), tput.get("baseline_server_c32")),
            "target": "> 1 (this code faster than the baseline)",
        }
        base_overhead = None
        if "p50_ms" in r.get("baseline_server_c1", {}) and "p50_ms" in r.get("raw_ort_b1", {}):
            base_overhead = round(r["baseline_server_c1"]["p50_ms"] - r["raw_ort_b1"]["p50_ms"], 3)
        ratios["baseline_server_c1_p50_overhead_ms_vs_raw_ort_b1"] = {
            "value": base_overhead,
            "target": "informational (the baseline's overhead, same run)",
        }
        ratios["baseline_server_c32_vs_sentence_transformers"] = {
            "value": ratio(tput.get("baseline_server_c32"), tput.get("sentence_transformers_b32")),
            "target": "informational",
        }
    res["ratios"] = ratios
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"Model server benchmark: {res['config']['model']} ({res['config']['precision']}), "
        f"{res['config']['texts']} texts, {res['machine']['cpu_model']} "
        f"({res['machine']['cores']} cores), {res['machine']['date']}",
        "",
        "| system | texts/s | p50 ms | p95 ms | p99 ms | latency of |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, v in res["results"].items():
        if "throughput_texts_s" not in v:
            lines.append(f"| {name} | {v.get('status', 'n/a')} | | | | |")
            continue
        unit = "one batch" if name.startswith(("raw_ort_b32", "sentence")) else "one call"
        lines.append(
            f"| {name} | {v['throughput_texts_s']:.1f} | {v['p50_ms']:.2f} | "
            f"{v['p95_ms']:.2f} | {v['p99_ms']:.2f} | {unit} |"
        )
    lines += ["", "| ratio | value | target | met |", "|---|---:|---|---|"]
    for name, v in res["ratios"].items():
        lines.append(f"| {name} | {v['value']} | {v['target']} | {v.get('met', '')} |")
    mem = res.get("server_memory", {})
    lines += [
        "",
        f"Server RSS with the model loaded: {mem.get('rss_mib')} MiB "
        f"(peak {mem.get('peak_rss_mib')} MiB)",
    ]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in res["results"].items() if "throughput_texts_s" in v}
    names = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    ax1.barh(names, [rows[n]["throughput_texts_s"] for n in names], color="tab:blue")
    ax1.set_xlabel("texts / s (higher is better)")
    ax1.set_title("Throughput")
    ax1.invert_yaxis()
    y = np.arange(len(names))
    for i, (p, color) in enumerate(
        [("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")]
    ):
        ax2.barh(y + (i - 1) * 0.27, [rows[n][p] for n in names], 0.27, label=p, color=color)
    ax2.set_yticks(y, names)
    ax2.set_xscale("log")
    ax2.set_xlabel("ms per call or batch (log)")
    ax2.set_title("Latency")
    ax2.invert_yaxis()
    ax2.legend()
    fig.suptitle(
        f"{res['config']['model']} on {res['machine']['cpu_model']} "
        f"({res['machine']['cores']} cores)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------


def default_artifact() -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO))
    from tests.fixtures.models import cached_artifact, minilm_path

    return cached_artifact(minilm_path(), "all-minilm-l6-v2"), minilm_path()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_server", description=__doc__)
    p.add_argument("--artifact", type=Path, help="artifact dir (default: MiniLM fp32, converted)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint for sentence-transformers")
    p.add_argument("--texts", type=int, default=None, help="texts per system (default 384)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--name",
        default="model_server",
        help="results file stem (default model_server; model_server_int8 for the int8 run)",
    )
    p.add_argument(
        "--infinity-pythonpath",
        default=os.environ.get("INFINITY_PYTHONPATH"),
        help="extra PYTHONPATH where infinity-emb is installed (its deps clash with the venv)",
    )
    p.add_argument("--no-infinity", action="store_true")
    p.add_argument(
        "--baseline-pythonpath",
        help="PYTHONPATH of other code (e.g. main before a change) to serve the same texts "
        "in the same rounds: rows baseline_server_c1/c32",
    )
    p.add_argument(
        "--baseline-artifact",
        type=Path,
        help="artifact for the baseline server (default: the same artifact)",
    )
    args = p.parse_args(argv)

    if args.artifact is None:
        artifact, checkpoint = default_artifact()
        checkpoint = args.checkpoint or checkpoint
    else:
        artifact, checkpoint = args.artifact, args.checkpoint
    n = args.texts or (64 if args.quick else 384)
    texts = make_texts(n)
    threads = args.threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    from akidb_embed import __version__
    from akidb_embed.artifact import ArtifactManifest

    manifest = ArtifactManifest.load(artifact)
    res: dict[str, Any] = {
        "benchmark": "model_server",
        "machine": machine_info(),
        "config": {
            "artifact": str(artifact),
            "model": manifest.name,
            "precision": manifest.precision,
            "texts": n,
            "quick": args.quick,
            "threads": threads,
            "concurrency": CONCURRENCY,
            "server_max_batch_size": 32,
            "request": "POST /v1/embeddings, one text per request, float JSON",
        },
        "versions": {"akidb_embed": __version__},
        "results": {},
    }
    r = res["results"]
    t_start = time.perf_counter()

    print(f"raw ONNX Runtime vs model server, {n} texts, interleaved ...", file=sys.stderr)
    raw = RawOrt(artifact, threads)
    tokens = [len(raw.tok.encode(t).ids) for t in texts]
    res["config"]["mean_tokens"] = round(float(np.mean(tokens)), 1)
    res["config"]["max_tokens"] = max(tokens)
    rounds = 2 if args.quick else 4
    res["config"]["rounds"] = rounds
    baseline = None
    if args.baseline_pythonpath:
        baseline = (args.baseline_pythonpath, args.baseline_artifact or artifact)
        res["config"]["baseline"] = {"pythonpath": baseline[0], "artifact": str(baseline[1])}
    interleaved, mem = bench_interleaved(artifact, raw, texts, threads, rounds, baseline)
    r.update(interleaved)
    res["server_memory"] = mem
    del raw
    print("HTTP floor (a do-nothing aiohttp handler, same client) ...", file=sys.stderr)
    from bench.http_floor import measure as http_floor

    floor = http_floor(texts=n // 2, rounds=rounds)
    r["http_floor_c1"] = floor["floor_c1"]
    if not args.quick:
        print("model server without batching ...", file=sys.stderr)
        r["server_c32_nobatch"] = bench_server(
            artifact, texts[: n // 2], threads, ["--max-batch-size", "1"], CONCURRENCY
        )

    if checkpoint is not None:
        print("sentence-transformers ...", file=sys.stderr)
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(checkpoint), device="cpu")
        res["versions"]["torch"] = torch.__version__
        res["versions"]["sentence_transformers"] = _version("sentence-transformers")
        r["sentence_transformers_b32"] = bench_batches(
            lambda b: st.encode(b, batch_size=CONCURRENCY, normalize_embeddings=True),
            texts,
            CONCURRENCY,
        )
        del st
    else:
        r["sentence_transformers_b32"] = {"status": "skipped: no --checkpoint"}

    if args.no_infinity or checkpoint is None:
        r["infinity_c32"] = {"status": "skipped"}
    else:
        print("infinity-emb ...", file=sys.stderr)
        r["infinity_c32"] = bench_infinity(checkpoint, texts, threads, args.infinity_pythonpath)

    for pkg in ("onnxruntime", "tokenizers", "numpy", "aiohttp"):
        res["versions"][pkg] = _version(pkg)
    res["duration_s"] = round(time.perf_counter() - t_start, 1)
    build_report(res)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, args.out_dir / f"{args.name}.png")
    print(markdown(res))
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
