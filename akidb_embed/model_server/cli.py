"""`akidb-embed serve`: one model per process over HTTP.

Nothing heavy is imported at module level (onnxruntime, numpy, aiohttp are imported
in the handler) so `akidb-embed --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve one converted model over HTTP (native /embed and OpenAI /v1/embeddings)",
        description=(
            "Load a converted artifact with ONNX Runtime, warm it up and serve it over HTTP. "
            "/readyz answers 503 until warm; SIGTERM drains in-flight requests and exits 0."
        ),
    )
    p.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="converted artifact directory")
    p.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free)")
    p.add_argument(
        "--providers",
        default="CPU",
        help="execution providers in order of preference, e.g. TensorRT,CUDA,CPU (default CPU)",
    )
    p.add_argument(
        "--max-batch-size", type=_positive_int, default=32, help="texts per ORT run (default 32)"
    )
    p.add_argument(
        "--max-batch-tokens",
        type=_positive_int,
        default=16384,
        help="padded tokens (texts x longest) per ORT run (default 16384)",
    )
    p.add_argument(
        "--max-texts-per-request",
        type=_positive_int,
        default=2048,
        help="more texts in one request -> 400 (default 2048)",
    )
    p.add_argument(
        "--max-queue-texts",
        type=_positive_int,
        default=8192,
        help="texts waiting for a batch before new requests get 503 (default 8192)",
    )
    p.add_argument(
        "--max-padding-ratio",
        type=float,
        default=1.3,
        help="cut a batch where padded tokens would exceed this multiple of real tokens "
        "(default 1.3; padding is pure waste on a CPU)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=16 * 1024 * 1024,
        help="largest request body; bigger -> 413 (default 16 MiB)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads (default 0 = one per physical core)",
    )
    p.add_argument(
        "--ort-spin",
        action="store_true",
        help="let ONNX Runtime threads spin between runs (off by default: it starves the "
        "event loop on small CPUs)",
    )
    p.add_argument("--name", default=None, help="model name to serve as (default: manifest name)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for in-flight requests after SIGTERM (default 30)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking file digests against the manifest at start-up",
    )
    p.add_argument(
        "--no-self-benchmark",
        action="store_true",
        help="skip the short self-measurement (p50/p95 ms, texts/s) the server runs on its "
        "inference thread between requests right after turning ready (shown in /info)",
    )
    p.add_argument(
        "--inline",
        action="store_true",
        help="run a lone text that finds the inference thread idle on the event loop (two "
        "thread wake-ups less at concurrency 1; off by default: under concurrent load it "
        "blocks the loop and defeats batching)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from akidb_embed.artifact import ArtifactError, ArtifactManifest

    log = logging.getLogger("akidb_embed.model_server")
    # Fail fast, before binding the port, on a directory that is not an artifact.
    try:
        ArtifactManifest.load(args.artifact_dir)
        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        if not providers:
            raise ValueError("no execution providers given")
    except (ArtifactError, ValueError) as exc:
        print(f"akidb-embed serve: {exc}", file=sys.stderr)
        return 1

    def load_engine() -> Any:
        from akidb_embed.model_server.engine import Engine

        return Engine(
            args.artifact_dir,
            providers=providers,
            threads=args.threads,
            name=args.name,
            verify=not args.no_verify,
            max_batch_size=args.max_batch_size,
            spin=args.ort_spin,
        )

    # Cold start: ONNX Runtime reads and prepares the graph (C++, GIL released) on a
    # thread while this one imports the HTTP side (aiohttp, prometheus_client).
    early = ThreadPoolExecutor(max_workers=1, thread_name_prefix="akidb-load")
    engine_future = early.submit(load_engine)
    early.shutdown(wait=False)

    import asyncio
    import signal

    from akidb_embed import aio
    from akidb_embed.model_server.app import ModelServer, ServerSettings, serve

    settings = ServerSettings(
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_padding_ratio=args.max_padding_ratio,
        max_texts_per_request=args.max_texts_per_request,
        max_queue_texts=max(args.max_queue_texts, args.max_texts_per_request),
        max_body_bytes=args.max_body_bytes,
        drain_timeout=args.drain_timeout,
        self_benchmark=not args.no_self_benchmark,
        inline_single=args.inline,
    )

    def loader() -> Any:
        return engine_future.result()  # raises what loading raised (ArtifactError, ...)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = ModelServer(settings, loader=loader)
        code = await serve(server, args.host, args.port, stop, access_log=args.access_log)
        log.info("exiting with code %d", code)
        return code

    return aio.run(main())
