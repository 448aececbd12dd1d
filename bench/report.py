"""Write docs/MODEL-PERFORMANCE.md from the benchmark results in bench/results/.

Only measured numbers go in, each table with the machine and the date it was measured
on. Run after any benchmark: ``python -m bench.report``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "MODEL-PERFORMANCE.md"


def _load(name: str) -> tuple[dict[str, Any], str] | None:
    path = RESULTS / name
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d")
    return data, mtime


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_line(machine: dict[str, Any], date: str) -> str:
    parts = [str(machine.get(k)) for k in ("cpu_model", "platform") if machine.get(k)]
    cores = machine.get("cores") or machine.get("cpus")
    if cores:
        parts.append(f"{cores} cores")
    if machine.get("memory_gib"):
        parts.append(f"{machine['memory_gib']} GiB")
    load = machine.get("load_average_at_start")
    if load:
        parts.append(f"load average at start {load[0]}")
    return f"Measured {date} on: " + ", ".join(parts) + "."


def model_server_section(name: str = "model_server", title: str = "MiniLM fp32 on the CPU") -> str:
    loaded = _load(f"{name}.json")
    if loaded is None:
        return ""
    data, mtime = loaded
    machine = data.get("machine", {})
    date = str(machine.get("date", mtime))[:10]
    rows = [
        [name, r.get("throughput_texts_s"), r.get("p50_ms"), r.get("p95_ms"), r.get("p99_ms")]
        for name, r in data.get("results", {}).items()
        if isinstance(r, dict) and "throughput_texts_s" in r
    ]
    ratios = [
        [name, r.get("value"), r.get("target"), {True: "yes", False: "no"}.get(r.get("met"), "")]
        for name, r in data.get("ratios", {}).items()
    ]
    mem = data.get("server_memory", {})
    mem_line = ", ".join(f"{k} {_fmt(v)}" for k, v in mem.items())
    return "\n\n".join(
        [
            f"## Model server: {title} — `python -m bench.model_server`",
            _machine_line(machine, date),
            _table(["system", "texts/s", "p50 ms", "p95 ms", "p99 ms"], rows),
            _table(["ratio", "value", "target", "met"], ratios),
            f"Server memory with the model loaded: {mem_line}.",
            f"![model server benchmark](../bench/results/{name}.png)",
        ]
    )


def gpu_section() -> str:
    loaded = _load("gpu_check_h200.json")
    if loaded is None:
        return ""
    data, _ = loaded
    providers = data.get("gpu_engine", {}).get("providers")
    rows: list[list[Any]] = []
    for name, r in data.get("raw", {}).items():
        rows.append([f"raw ORT {name}", r["texts_per_s"], r["p50_ms"], r["p95_ms"], r["p99_ms"]])
    for group in ("server", "server_nobatch"):
        for conc, r in data.get(group, {}).items():
            label = f"{group.replace('_', ' ')} {conc} (HTTP)"
            rows.append([label, r["texts_per_s"], r["p50_ms"], r["p95_ms"], r["p99_ms"]])
    ratios = [[k, v] for k, v in data.get("ratios", {}).items()]
    parity = data.get("parity_vs_cpu_fp32", {})
    return "\n\n".join(
        [
            "## Model server on a GPU (MiniLM fp16) — `python -m bench.gpu_check`",
            f"Measured {data.get('date', '')[:10]} on {data.get('gpu')} "
            f"(onnxruntime-gpu {data.get('onnxruntime')}, providers in use {providers}; "
            "TensorRT libraries absent there, so the engine fell back to CUDA as designed). "
            "`gpu_*` rows run on the GPU, `cpu_*` rows on that machine's CPU, same artifact.",
            f"fp16 on the GPU vs the fp32 CPU reference: min cosine {parity.get('min_cosine')}.",
            _table(["system", "texts/s", "p50 ms", "p95 ms", "p99 ms"], rows),
            _table(["ratio", "value"], ratios),
        ]
    )


def gateway_hotpath_section() -> str:
    """Both upstreams of `bench.gateway_hotpath`: the model server, and the fixed-answer floor."""
    parts = []
    for name, what in (
        ("gateway_hotpath.json", "in front of the MiniLM model server"),
        ("gateway_hotpath_floor.json", "in front of a fixed-answer server (`--upstream floor`)"),
    ):
        loaded = _load(name)
        if loaded is None:
            continue
        data, mtime = loaded
        machine = data.get("machine", {})
        rows = []
        for tool, summary in data.get("results", {}).items():
            direct = summary["median_of_rounds"]["direct"]
            for gateway in ("before", "after"):
                if gateway not in summary:
                    continue
                r = summary[gateway]
                own = summary["median_of_rounds"][gateway]
                rows.append(
                    [
                        tool,
                        "this" if gateway == "after" else "baseline",
                        direct["c1"]["p50_ms"],
                        own["c1"]["p50_ms"],
                        r["c1_p50_overhead_ms"],
                        direct["c32"]["rps"],
                        own["c32"]["rps"],
                        r["c32_throughput_ratio"],
                        r["c32_gateway_cpu_us_per_request"],
                    ]
                )
        header = [
            "client",
            "gateway",
            "direct c1 p50 ms",
            "gateway c1 p50 ms",
            "c1 overhead ms",
            "direct c32 req/s",
            "gateway c32 req/s",
            "c32 ratio",
            "gateway CPU us/req (c32)",
        ]
        parts += [
            f"### Gateway {what}",
            _machine_line(machine, str(data.get("date", mtime))[:10])
            + f" Median of {data.get('rounds')} interleaved rounds;"
            f" baseline gateway: {data.get('before') or 'none'}.",
            _table(header, rows),
        ]
    if not parts:
        return ""
    return "\n\n".join(
        [
            "## Gateway hot path (loopback, processes) — `python -m bench.gateway_hotpath`",
            "A gateway process with a static pod list in front of one upstream process, one "
            "short text per request, loaded by `wrk` and by an aiohttp client at "
            "concurrency 1 and 32. Goals: c1 overhead <= 0.3 ms, c32 ratio >= 0.97 (model "
            "upstream). With the fixed-answer upstream the overhead is the gateway's own "
            "cost without the model's run-to-run noise, and the c32 figure is the "
            "gateway's capacity on these cores, not a ratio to meet. Two gateway processes "
            "of identical code measured 0.38 vs 0.41 ms c1 overhead and 242 vs 200 us of "
            "CPU per request (2026-12-06, floor upstream, 3 rounds): differences between "
            "rows smaller than that are noise.",
            *parts,
        ]
    )


def gateway_section() -> str:
    loaded = _load("gateway.json")
    if loaded is None:
        return ""
    data, mtime = loaded
    rows: list[list[Any]] = []
    for conc, r in data.get("results", {}).items():
        if not isinstance(r, dict) or "direct" not in r:
            continue
        for path in ("direct", "gateway"):
            p = r[path]
            rows.append([conc.replace("_", " "), path, p["p50_ms"], p["p95_ms"], p["p99_ms"]])
        rows.append([conc.replace("_", " "), "overhead", r["overhead_p50_ms"], "", ""])
    parts = [
        "## Gateway warm path — `python -m bench.gateway`",
        _machine_line(data.get("machine", {}), str(data.get("date", mtime))[:10]),
        _table(["load", "path", "p50 ms", "p95 ms", "p99 ms"], rows),
    ]
    targets = data.get("targets_met")
    if targets:
        parts.append(_table(["target", "met"], [[k, v] for k, v in targets.items()]))
    cold = data.get("cold_start")
    if cold:
        models = cold.get("models", {})
        names = list(models)
        part_names = list(cold.get("parts", {}))
        rows = [
            [f"{p}: {cold['parts'][p]}", *(models[n]["p50_ms"].get(p, "") for n in names)]
            for p in part_names
        ]
        rows.append(["**total p50**", *(models[n]["total_p50_ms"] for n in names)])
        rows.append(["total max", *(models[n]["total_max_ms"] for n in names)])
        parts.append(
            f"### Cold start (p50 ms), {str(cold.get('date', ''))[:10]}\n\n"
            + f"{cold.get('what', '')}.\n\n"
            + _table(["part", *names], rows)
        )
    churn = data.get("lru_churn")
    if churn:
        rows = [
            [k.replace("_", " "), churn[k]["n"], churn[k]["p50_ms"], churn[k]["p95_ms"]]
            for k in ("warm", "cold", "cold_without_capacity_wait", "cold_with_capacity_wait")
            if k in churn
        ]
        parts.append(
            f"### LRU churn, {str(churn.get('date', ''))[:10]}\n\n"
            + f"{churn.get('what', '')}: {churn.get('succeeded')}/{churn.get('requests_total')} "
            + f"requests succeeded, {churn.get('evictions')} evictions, at most "
            + f"{churn.get('max_model_pods_seen')} model pods seen.\n\n"
            + _table(["requests", "n", "p50 ms", "p95 ms"], rows)
        )
    return "\n\n".join(parts)


def operator_section() -> str:
    loaded = _load("operator_decisions.json")
    if loaded is None:
        return ""
    data, mtime = loaded
    policy = [
        [r["models"], r["quiet_ms"], r["activate_ms"], r["evict_for_demand_ms"]]
        for r in data.get("policy", [])
    ]
    cluster = [
        [
            r.get("variant", "this"),
            r["models"],
            r.get("first_start_demand_s", "-"),
            r.get("first_pass_s", "-"),
            r["demand_to_deployment_p50_ms"],
            r["demand_to_deployment_max_ms"],
            r.get("restart_demand_s", "-"),
            r.get("restart_pass_s", r.get("startup_resume_s", "-")),
        ]
        for r in data.get("cluster", [])
    ]
    parts = [
        "## Operator decisions — `python -m bench.operator_decisions --cluster`",
        _machine_line(data.get("machine", {}), str(data.get("date", mtime))[:10]),
        "The pure placement policy, one decision (ms):",
        _table(["EmbeddingModels", "nothing to do", "activate", "evict for demand"], policy),
    ]
    if cluster:
        parts += [
            "Against the real API server, times from the operator process's start: a demand "
            "posted as it starts (first start: every Deployment still to create), the pass "
            "over every model, demand (status.requestedAt) to the activation's Deployment "
            "update once it runs, and the same after a restart with everything in place:",
            _table(
                [
                    "variant",
                    "EmbeddingModels",
                    "1st-start demand s",
                    "1st pass s",
                    "demand p50 ms",
                    "demand max ms",
                    "restart demand s",
                    "restart pass s",
                ],
                cluster,
            ),
        ]
    return "\n\n".join(parts)


def cold_start_section() -> str:
    loaded = _load("cold_start.json")
    if loaded is None:
        return ""
    data, _ = loaded
    keys = ("port_open_s", "ready_s", "first_response_s", "server_load_s", "server_warmup_s")
    rows = [[name, *(r["median"][k] for k in keys)] for name, r in data["results"].items()]
    systems = data["config"]["systems"]
    legend = "; ".join(f"`{k}`: code {v[1]}, artifact {v[0]}" for k, v in systems.items())
    return "\n\n".join(
        [
            "## Model server cold start (MiniLM fp32, CPU) — `python -m bench.cold_start`",
            f"Measured on {data['machine']}; median of {data['config']['rounds']} starts per "
            f"system, alternated. Seconds from process start. {legend}.",
            _table(["system", *keys], rows),
        ]
    )


def http_floor_section() -> str:
    loaded = _load("http_floor.json")
    if loaded is None:
        return ""
    data, mtime = loaded
    machine = data.get("machine", {})
    rows = [
        [name, r["p50_ms"], r["p95_ms"], r["throughput_texts_s"]]
        for name, r in data["results"].items()
    ]
    return "\n\n".join(
        [
            "## HTTP floor: a do-nothing aiohttp handler — `python -m bench.http_floor`",
            _machine_line(machine, str(machine.get("date", mtime))[:10]),
            "The part of the model server's c1 overhead that is HTTP itself (same client, "
            "same request shape, a fixed pre-encoded answer).",
            _table(["system", "p50 ms", "p95 ms", "requests/s"], rows),
        ]
    )


def models_section() -> str:
    loaded = _load("models.json")
    if loaded is None:
        return ""
    data, _ = loaded
    rows = []
    for name, r in data.get("models", {}).items():
        if "p50_ms_c1" not in r:
            rows.append([name, r.get("status", "not measured"), "", "", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                r["weights"],
                r["cpu_graph"],
                r["p50_ms_c1"],
                r["p95_ms_c1"],
                r["throughput_c32_texts_s"],
                r["rss_mib"],
                r["cold_start_s"],
                r["mean_tokens"],
                r["machine"],
            ]
        )
    header = [
        "model",
        "weights",
        "CPU graph",
        "p50 ms c1",
        "p95 ms c1",
        "texts/s c32",
        "RSS MiB",
        "cold start s",
        "mean tokens",
        "machine, date",
    ]
    parts = [
        "## Catalog models at true size (fp32, CPU) — `python -m bench.models`",
        "Each served by `akidb-embed serve` (one text per request over HTTP; c1 = "
        "concurrency 1, c32 = 32). Random-weight models have their real architecture and "
        "size (the compute does not depend on the weights' values); Qwen3's tokenizer is "
        "a byte-level BPE trained here, so its token counts differ from the real model's.",
        _table(header, rows),
    ]
    for name, r in data.get("models", {}).items():
        w = r.get("wrk_c32")
        if w and "throughput_texts_s" in w:
            parts.append(
                f"External load generator on {name}: `{w['tool']}` -> "
                f"{_fmt(w['throughput_texts_s'])} requests/s, p50 {w.get('p50_ms')} ms, "
                f"p99 {w.get('p99_ms')} ms."
            )
    return "\n\n".join(parts)


def render() -> str:
    sections = [
        s
        for s in (
            model_server_section(),
            model_server_section(
                "model_server_int8",
                "MiniLM int8 on the CPU (sentence-transformers row: fp32 PyTorch)",
            ),
            cold_start_section(),
            http_floor_section(),
            models_section(),
            gpu_section(),
            gateway_hotpath_section(),
            gateway_section(),
            operator_section(),
        )
        if s
    ]
    head = (
        "# Model performance\n\n"
        "Generated by `python -m bench.report` from `bench/results/*.json`. Measured numbers "
        "only; each table names the machine and the date. The development machine is a "
        "shared 2-core VM, so CPU numbers are noisy: the benchmarks compare systems side by "
        "side in one run, and the ratios are what to read."
    )
    return "\n\n".join([head, *sections]) + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
