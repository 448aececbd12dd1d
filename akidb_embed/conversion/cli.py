"""`akidb-embed convert`: a Hugging Face checkpoint -> ONNX artifact directory."""

from __future__ import annotations

import argparse
import json
import sys

from akidb_embed.catalog import FAMILIES, POOLING_MODES, PRECISIONS

EPILOG = """\
SOURCE is a local checkpoint directory (config.json, *.safetensors, tokenizer files)
or a Hugging Face repo id (fetched through the Hugging Face cache; set HF_HUB_OFFLINE=1
to resolve only from the cache). Serving rules come from the catalog (`akidb-embed
models`) by --name or repo id, else from --family / --pooling and the checkpoint.
The artifact is written to OUT.partial-<random> and renamed to OUT after the parity
check against PyTorch passed (cosine >= 0.999 fp32/fp16, >= 0.99 int8).
Exit status: 0 converted or already converted, 1 conversion failed, 2 usage error.
"""


def _dims(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc


def _convert(args: argparse.Namespace) -> int:
    from akidb_embed.conversion.convert import ConversionError, convert

    try:
        manifest = convert(
            args.source,
            args.out,
            name=args.name,
            family=args.family,
            precision=args.precision,
            revision=args.revision,
            opset=args.opset,
            max_length=args.max_length,
            pooling=args.pooling,
            normalize=args.normalize,
            matryoshka_dimensions=args.matryoshka_dimensions,
            force=args.force,
            parity_threshold=args.parity_threshold,
            warm_tensorrt=args.warm_tensorrt,
        )
    except ConversionError as exc:
        print(f"akidb-embed convert: error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "out": str(args.out),
        "name": manifest.name,
        "key": manifest.key,
        "precision": manifest.precision,
        "dimension": manifest.dimension,
        "parity": manifest.parity.min_cosine if manifest.parity else None,
    }
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from akidb_embed.conversion.export import DEFAULT_OPSET

    p = sub.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint to an ONNX artifact (fp32/fp16/int8)",
        description="Convert a Hugging Face checkpoint to an ONNX artifact directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="checkpoint directory or hub repo id")
    p.add_argument("out", metavar="OUT", help="artifact directory to create")
    p.add_argument("--name", help="model name (a catalog name selects its serving rules)")
    p.add_argument("--family", choices=sorted(FAMILIES), help="model family for unknown models")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default fp32")
    p.add_argument("--revision", default="main", help="hub revision (default main)")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument("--max-length", type=int, help="maximum tokens per text")
    p.add_argument("--pooling", choices=POOLING_MODES, help="pooling for unknown models")
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalize embeddings (default: family / checkpoint)",
    )
    p.add_argument(
        "--matryoshka-dimensions",
        type=_dims,
        metavar="D1,D2,...",
        help="dimensions the model may be truncated to",
    )
    p.add_argument(
        "--parity-threshold",
        type=float,
        help="minimum per-text cosine (default 0.999 fp32/fp16, 0.99 int8)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing artifact at OUT")
    p.add_argument(
        "--warm-tensorrt",
        action="store_true",
        help="build and cache TensorRT engines in OUT/trt-cache (skipped without TensorRT)",
    )
    p.set_defaults(handler=_convert)
