"""What each output type costs: retrieval quality (recall@10 against float) and bytes.

A fixed query/document set (sentences of the Python standard library's docstrings and
scikit-learn's dataset descriptions, both pinned by the environment; queries are held
out of the documents) is embedded once with the real all-MiniLM-L6-v2 artifact through
the model server's own post-processing (`akidb_embed.api.encoding`, the ranges its
conversion calibrated). Each type is then searched the way a vector database of that
type does: float and base64 by dot product (cosine), int8 and uint8 by L2 distance
(the calibrated mapping offsets each dimension, so an integer dot product is worse:
shown as "int8 (dot)"), binary and ubinary by Hamming distance. recall@10 is the share of
the float top 10 that the type's top 10 keeps (float = 1 by definition, the baseline of
the same run). Bytes: one vector in binary form, and in the JSON response.

    .venv/bin/python -m bench.output_types [--quick] [--artifact DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import inspect
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "output_types.json"
MODULES = [
    *[
        "argparse",
        "asyncio",
        "base64",
        "bisect",
        "calendar",
        "collections",
        "contextlib",
        "copy",
        "csv",
        "dataclasses",
    ],
    *[
        "datetime",
        "decimal",
        "difflib",
        "email",
        "enum",
        "fractions",
        "functools",
        "gettext",
        "glob",
        "gzip",
        "hashlib",
    ],
    *[
        "heapq",
        "hmac",
        "html",
        "http.client",
        "inspect",
        "io",
        "ipaddress",
        "itertools",
        "json",
        "locale",
        "logging",
    ],
    *[
        "math",
        "mimetypes",
        "operator",
        "os",
        "pathlib",
        "pickle",
        "pprint",
        "queue",
        "random",
        "re",
        "secrets",
        "shlex",
    ],
    *[
        "shutil",
        "socket",
        "sqlite3",
        "statistics",
        "string",
        "struct",
        "subprocess",
        "tarfile",
        "tempfile",
    ],
    *[
        "textwrap",
        "threading",
        "time",
        "timeit",
        "tokenize",
        "traceback",
        "typing",
        "unittest",
        "urllib.parse",
    ],
    *["uuid", "weakref", "zipfile", "zlib"],
]
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _texts_of(doc: str) -> list[str]:
    flat = re.sub(r"\s+", " ", doc)
    return [s.strip() for s in SENTENCE.split(flat) if 40 <= len(s.strip()) <= 300]


def corpus() -> list[str]:
    """Distinct sentences in a fixed order (sorted by digest: a stable shuffle)."""
    found: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in [(name, module), *inspect.getmembers(module)]:
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            if doc:
                found.update(_texts_of(doc))
    import sklearn.datasets

    descr = Path(sklearn.datasets.__file__).parent / "descr"
    for rst in sorted(descr.glob("*.rst")):
        found.update(_texts_of(rst.read_text()))
    return sorted(found, key=lambda s: hashlib.sha1(s.encode()).hexdigest())


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def search(kind: str, queries: Any, docs: Any, k: int) -> np.ndarray:
    if kind in ("float", "base64"):
        return top_k(np.asarray(queries) @ np.asarray(docs).T, k)
    if kind == "int8 (dot)":  # the values are offset per dimension: dot product suffers
        return top_k(np.asarray(queries, np.int32) @ np.asarray(docs, np.int32).T, k)
    if kind in ("int8", "uint8"):
        q, d = np.asarray(queries, np.int32), np.asarray(docs, np.int32)
        dist = (q * q).sum(1)[:, None] - 2 * q @ d.T + (d * d).sum(1)[None, :]
        return top_k(-dist, k)
    # binary / ubinary: Hamming distance over the packed bits
    q = np.unpackbits(np.asarray(queries).view(np.uint8), axis=1).astype(np.int32)
    d = np.unpackbits(np.asarray(docs).view(np.uint8), axis=1).astype(np.int32)
    agree = q @ d.T + (1 - q) @ (1 - d).T
    return top_k(agree, k)


def run(artifact: Path, n_docs: int, n_queries: int, k: int = 10) -> dict[str, Any]:
    from akidb_embed.api import codec, encoding
    from akidb_embed.api.types import ENCODING_FORMATS
    from akidb_embed.model_server.engine import Engine
    from akidb_embed.model_server.pooling import truncate_dims

    texts = corpus()
    queries, docs = texts[:n_queries], texts[n_queries : n_queries + n_docs]
    engine = Engine(artifact, threads=0)
    dim = engine.dimension

    def embed(batch: list[str]) -> np.ndarray:
        rows = [engine.run(engine.tokenize(batch[i : i + 64])) for i in range(0, len(batch), 64)]
        return truncate_dims(np.concatenate(rows), None, engine.manifest.normalize)

    q_float, d_float = embed(queries), embed(docs)
    ranges = engine.quantization_ranges(dim, engine.manifest.normalize)
    truth = search("float", q_float, d_float, k)
    rows = []
    for kind in [*ENCODING_FORMATS, "int8 (dot)"]:
        wire_type = kind.split()[0]
        q = encoding.encode(q_float, wire_type, ranges)
        d = encoding.encode(d_float, wire_type, ranges)
        if kind == "base64":  # what a client decodes
            q = np.stack([encoding.from_base64(s) for s in q])
            d = np.stack([encoding.from_base64(s) for s in d])
        found = search(kind, q, d, k)
        recall = float(
            np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, found, strict=True)])
        )
        wire = encoding.encode(d_float[:1], wire_type, ranges)
        size = encoding.bytes_per_embedding(wire_type, dim)
        rows.append(
            {
                "type": kind,
                f"recall_at_{k}": round(recall, 4),
                "bytes": size,
                "bytes_vs_float": round(size / (4 * dim), 4),
                "json_bytes": len(codec.dumps(wire[0])),
            }
        )
    return {
        "model": engine.manifest.name,
        "precision": engine.manifest.precision,
        "dimension": dim,
        "queries": len(queries),
        "documents": len(docs),
        "k": k,
        "calibration_texts": "akidb_embed.conversion.calibration.CALIBRATION_TEXTS",
        "rows": rows,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def default_artifact() -> Path:
    sys.path.insert(0, str(REPO))
    from tests.fixtures.models import cached_artifact, minilm_path

    return cached_artifact(minilm_path(), "all-minilm-l6-v2")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.output_types", description=__doc__)
    p.add_argument("--artifact", type=Path, help="artifact dir (default: MiniLM fp32)")
    p.add_argument("--quick", action="store_true", help="small smoke run, nothing written")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    artifact = args.artifact or default_artifact()
    n_docs, n_queries = (300, 30) if args.quick else (3000, 300)
    result = run(artifact, n_docs, n_queries)
    print(
        f"{result['model']} ({result['precision']}), {result['queries']} queries x "
        f"{result['documents']} documents"
    )
    print(f"{'type':10} {'recall@10':>9} {'bytes':>6} {'vs float':>8} {'JSON bytes':>10}")
    for row in result["rows"]:
        print(
            f"{row['type']:10} {row['recall_at_10']:9.4f} {row['bytes']:6d} "
            f"{row['bytes_vs_float']:8.3f} {row['json_bytes']:10d}"
        )
    if not args.quick:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
