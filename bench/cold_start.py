"""Model-server cold start: process start -> ready -> first embedding, before/after.

Each round starts ``python -m akidb_embed serve ARTIFACT`` (self-benchmark off) and
measures, from ``Popen``: the port accepting connections (imports done, app up), the
first 200 from ``/readyz`` (model loaded and warmed up) and the first answer of
``POST /v1/embeddings``; ``/info`` gives the server's own load and warm-up seconds. The
systems alternate round by round (a shared machine's noise hits all alike):

- ``this``: this tree's code on ``--artifact`` (default: MiniLM fp32, converted by this
  tree: the saved CPU graph);
- ``baseline`` (with ``--baseline-pythonpath DIR --baseline-artifact DIR``): another
  tree's code (e.g. main before this work) on its own artifact.

    flock /tmp/akidb-bench.lock .venv/bin/python -m bench.cold_start \\
        --baseline-pythonpath /tmp/perf-before --baseline-artifact /tmp/perf/minilm-main-fp32

Writes bench/results/cold_start.json and prints a markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def one_start(artifact: Path, pythonpath: str, timeout: float = 120.0) -> dict[str, float]:
    """Seconds from Popen to: port open, ready, first embedding (and the server's own)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", "akidb_embed", "--log-level", "WARNING", "serve", str(artifact)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-self-benchmark"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, float] = {}
    try:
        deadline = t0 + timeout
        while "port_open_s" not in out:
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"server did not start: {cmd}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    out["port_open_s"] = time.perf_counter() - t0
            except OSError:
                time.sleep(0.002)
        while "ready_s" not in out:
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"server did not get ready: {cmd}")
            status, _ = _get(url + "/readyz")
            if status == 200:
                out["ready_s"] = time.perf_counter() - t0
            else:
                time.sleep(0.002)
        body = json.dumps({"input": ["a first request after a cold start"]}).encode()
        status, answer = _get(url + "/v1/embeddings", body)
        if status != 200:
            raise RuntimeError(f"first request failed: {status} {answer[:200]!r}")
        out["first_response_s"] = time.perf_counter() - t0
        _, info = _get(url + "/info")
        data = json.loads(info)
        out["server_load_s"] = float(data.get("load_s") or 0.0)
        out["server_warmup_s"] = float(data.get("warmup_s") or 0.0)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.median([r[k] for r in rows])), 4) for k in rows[0]}


def run(systems: dict[str, tuple[Path, str]], rounds: int) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in systems}
    for artifact, path in systems.values():  # one untimed start each: page cache warm
        one_start(artifact, path)
    for _ in range(rounds):
        for name, (artifact, path) in systems.items():
            samples[name].append(one_start(artifact, path))
    return {k: {"median": median(v), "rounds": v} for k, v in samples.items()}


def markdown(res: dict[str, Any]) -> str:
    r = res["results"]
    keys = ("port_open_s", "ready_s", "first_response_s", "server_load_s", "server_warmup_s")
    lines = [
        f"Cold start (median of {res['config']['rounds']} rounds), {res['machine']}",
        "",
        "| system | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, v in r.items():
        m = v["median"]
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
    if "baseline" in r:
        a = r["this"]["median"]["first_response_s"]
        b = r["baseline"]["median"]["first_response_s"]
        lines += ["", f"first response: {a:.3f} s vs baseline {b:.3f} s (ratio {a / b:.2f})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__)
    p.add_argument("--artifact", type=Path, help="artifact for this tree's code")
    p.add_argument("--baseline-pythonpath", help="PYTHONPATH of the baseline code")
    p.add_argument("--baseline-artifact", type=Path, help="artifact for the baseline code")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    from bench.model_server import machine_info

    artifact = args.artifact
    if artifact is None:
        sys.path.insert(0, str(REPO))
        from tests.fixtures.models import cached_artifact, minilm_path

        artifact = cached_artifact(minilm_path(), "all-minilm-l6-v2")
    systems = {"this": (artifact, str(REPO))}
    if args.baseline_pythonpath:
        base_art = args.baseline_artifact or artifact
        systems["baseline"] = (base_art, args.baseline_pythonpath)
        systems["this_on_baseline_artifact"] = (base_art, str(REPO))
    machine = machine_info()
    res = {
        "benchmark": "cold_start",
        "machine": f"{machine['cpu_model']} ({machine['cores']} cores), {machine['date']}",
        "config": {
            "rounds": args.rounds,
            "systems": {k: [str(a), p] for k, (a, p) in systems.items()},
        },
        "results": run(systems, args.rounds),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "cold_start.json").write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
