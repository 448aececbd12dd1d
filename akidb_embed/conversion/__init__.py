"""akidb-embed conversion: Hugging Face checkpoint -> ONNX artifact (fp32/fp16/int8).

``convert(source, out_dir, ...)`` is the Python API (the operator's conversion Job and
the tests use it); ``akidb-embed convert`` is its command line. Importing this package
is light: torch, transformers and onnx are imported only when a conversion runs.
"""

from __future__ import annotations

from akidb_embed.conversion.convert import ConversionError, convert
from akidb_embed.conversion.parity import ParityError
from akidb_embed.conversion.source import SourceError, resolve_source, seed_hf_cache

__all__ = [
    "ConversionError",
    "ParityError",
    "SourceError",
    "convert",
    "resolve_source",
    "seed_hf_cache",
]
