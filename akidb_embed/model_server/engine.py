"""The inference engine: one converted artifact, an ONNX Runtime session, a tokenizer.

The engine is synchronous and thread-compatible in the way the batcher uses it:
``tokenize`` runs on the event loop (or any thread), ``run`` runs on one inference
thread at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from akidb_embed.api.encoding import Ranges
from akidb_embed.artifact import (
    MODEL_FILE,
    TOKENIZER_FILE,
    ArtifactError,
    ArtifactManifest,
    verify_files,
)
from akidb_embed.model_server.pooling import POOLING_MODES, pool

log = logging.getLogger("akidb_embed.model_server")

TRT_CACHE_ENV = "AKIDB_TRT_CACHE_DIR"


def _copy_new(src: str, dst: str) -> None:
    """copytree's copier that keeps engines already in the writable cache."""
    if not os.path.exists(dst):
        shutil.copy2(src, dst)


PROVIDER_ALIASES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU = "CPUExecutionProvider"
INPUT_TYPES: tuple[str, ...] = ("query", "document")


class TextTooLongError(ValueError):
    """A text is longer than the model's limit and the caller asked not to truncate."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"text {index} has {tokens} tokens, more than this model's limit of {limit} "
            "tokens; shorten it or send truncate: true"
        )
        self.index = index
        self.tokens = tokens
        self.limit = limit


def provider_name(name: str) -> str:
    """'TensorRT' / 'cuda' / 'CPUExecutionProvider' -> the ONNX Runtime provider name."""
    key = name.strip()
    return PROVIDER_ALIASES.get(key.lower(), key)


def parse_providers(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if item.strip():
            name = provider_name(item)
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("no execution providers given")
    return out


@dataclass
class ProviderChoice:
    requested: list[str]
    available: list[str]
    selected: list[str]  # what we pass to the session, in order
    notes: list[str] = field(default_factory=list)  # why something was skipped


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> ProviderChoice:
    """Keep the requested providers this onnxruntime build has, in order; CPU last resort."""
    choice = ProviderChoice(list(requested), list(available), [])
    for name in requested:
        if name in available:
            choice.selected.append(name)
        else:
            choice.notes.append(
                f"{name} not available in this onnxruntime build (available: {list(available)})"
            )
    if CPU not in choice.selected:
        choice.selected.append(CPU)
        if CPU not in requested:
            choice.notes.append(f"{CPU} added as the last resort")
    return choice


@dataclass
class Batch:
    """Padded model inputs for a list of token-id sequences."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


# On the CPU the long warm-up run only sizes the arena, and at a large model's full length
# it takes minutes on a few cores (Qwen3-Embedding-0.6B at 8192 tokens: over 270 s on two),
# so the pod would not turn Ready within the gateway's cold-start timeout.
CPU_WARMUP_MAX_TOKENS = 512


class Engine:
    """Loads an artifact directory and turns token ids into pooled embeddings."""

    def __init__(
        self,
        artifact_dir: str | os.PathLike[str],
        providers: str | Sequence[str] = ("CPU",),
        threads: int = 0,
        name: str | None = None,
        verify: bool = True,
        max_batch_size: int = 32,
        spin: bool = False,
    ) -> None:
        t0 = time.perf_counter()
        self.artifact_dir = Path(artifact_dir)
        self.manifest = ArtifactManifest.load(self.artifact_dir)
        m = self.manifest
        self.task = m.task
        if m.task == "embed" and m.pooling not in POOLING_MODES:
            raise ArtifactError(
                f"manifest pooling {m.pooling!r} is not one of {', '.join(POOLING_MODES)}"
            )
        if m.padding_side not in ("left", "right"):
            raise ArtifactError(f"manifest padding_side {m.padding_side!r} must be left or right")
        requested = parse_providers(providers)
        self.model_file = self._graph_file(requested)
        for required in (self.model_file, TOKENIZER_FILE):
            if not (self.artifact_dir / required).is_file():
                raise ArtifactError(f"artifact file {self.artifact_dir / required} is missing")
        if verify:  # only what this process reads: the other graph is not its concern
            read = {self.model_file, self.model_file + ".data", TOKENIZER_FILE}
            verify_files(self.artifact_dir, m, only=read)
        self.name = name or m.name
        self.max_length = int(m.max_length)
        self.left_pad = m.padding_side == "left"
        self._load_tokenizers()
        self._load_session(requested, threads, max_batch_size, spin)
        self._ranges: dict[tuple[str, int], Ranges | None] = {}
        self.load_seconds = time.perf_counter() - t0
        self.warmup_seconds = 0.0
        self.warmed = False

    # -- loading -------------------------------------------------------------------

    def _load_tokenizers(self) -> None:
        from tokenizers import Tokenizer

        path = self.artifact_dir / TOKENIZER_FILE
        try:
            self._tok = Tokenizer.from_file(str(path))
            self._tok_full = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise ArtifactError(f"{path} is not a valid tokenizer: {exc}") from exc
        for tok in (self._tok, self._tok_full):
            tok.no_padding()
        self._tok.enable_truncation(self.max_length)
        self._tok_full.no_truncation()
        self.pad_id = self._find_pad_id()
        self.vocab_size = int(self._tok_full.get_vocab_size(with_added_tokens=True))
        self.segment_sep = self._segment_separator()

    def _segment_separator(self) -> int | None:
        """The token after which a pair's second segment starts (token type 1), if any.

        BERT-style cross-encoders mark the document with token type 1 from the token
        after the first [SEP]; RoBERTa-style ones use type 0 throughout (None).
        """
        enc = self._tok_full.encode("a", "b")
        types = list(enc.type_ids)
        if 1 not in types:
            return None
        return int(enc.ids[types.index(1) - 1])

    def _find_pad_id(self) -> int:
        padding = self._tok_full.padding
        if padding and padding.get("pad_id") is not None:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>", "<|endoftext|>", "</s>"):
            tid = self._tok_full.token_to_id(token)
            if tid is not None:
                return int(tid)
        return 0

    def _graph_file(self, requested: list[str]) -> str:
        """The saved CPU graph when the session runs on the CPU alone, else model.onnx.

        The CPU graph (chosen and optimized at conversion) holds ONNX Runtime's CPU
        fusions, which CUDA and TensorRT do not all take; those get the portable graph.
        """
        import onnxruntime as ort

        cpu_graph = self.manifest.cpu_model
        selected = choose_providers(requested, ort.get_available_providers()).selected
        if cpu_graph and selected == [CPU] and (self.artifact_dir / cpu_graph).is_file():
            return cpu_graph
        return MODEL_FILE

    def _load_session(
        self, requested: list[str], threads: int, max_batch_size: int, spin: bool
    ) -> None:
        import onnxruntime as ort

        model_path = self.artifact_dir / self.model_file
        choice = choose_providers(requested, ort.get_available_providers())
        so = ort.SessionOptions()
        # The saved CPU graph already holds the basic and extended optimizations (the
        # layout level adds nothing to a transformer); the portable graph gets them here.
        level = ort.GraphOptimizationLevel
        saved = self.model_file != MODEL_FILE
        so.graph_optimization_level = level.ORT_ENABLE_EXTENDED if saved else level.ORT_ENABLE_ALL
        so.enable_mem_pattern = True
        so.enable_cpu_mem_arena = True
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = max(0, int(threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # Spinning intra-op threads burn the cores the event loop and the tokenizer
        # need between runs; measured on a 2-core machine it doubled c1 latency.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        provider_args: list[tuple[str, dict[str, Any]] | str] = []
        for name in choice.selected:
            if name == "TensorrtExecutionProvider":
                provider_args.append((name, self._trt_options(max_batch_size)))
            else:
                provider_args.append(name)
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=provider_args)
        except Exception as exc:
            raise ArtifactError(f"{model_path} could not be loaded by ONNX Runtime: {exc}") from exc
        active = list(self.session.get_providers())
        for name in choice.selected:
            if name not in active:
                choice.notes.append(f"{name} failed to initialise (see onnxruntime log)")
        self.providers = active
        self.provider_choice = choice
        for note in choice.notes:
            log.warning("%s; falling back to %s", note, active[0])
        log.info("execution providers in use: %s (requested %s)", active, requested)
        names = {i.name for i in self.session.get_inputs()}
        expected = set(self.manifest.inputs)
        if not {"input_ids", "attention_mask"} <= names:
            raise ArtifactError(
                f"{model_path} inputs {sorted(names)} lack input_ids/attention_mask"
            )
        if expected and not expected <= names:
            raise ArtifactError(
                f"manifest inputs {sorted(expected)} do not match the graph's {sorted(names)}"
            )
        self.input_names = names
        outputs = [o.name for o in self.session.get_outputs()]
        if self.manifest.output not in outputs:
            raise ArtifactError(
                f"manifest output {self.manifest.output!r} is not a graph output {outputs}"
            )
        self.output_name = self.manifest.output

    def _trt_options(self, max_batch_size: int) -> dict[str, Any]:
        built = self.artifact_dir / "trt-cache"
        # In a cluster the store is read-only: the operator mounts a writable cache for
        # this artifact ($AKIDB_TRT_CACHE_DIR); engines the converter built are seeded in.
        cache = Path(os.environ.get(TRT_CACHE_ENV) or built)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            if cache != built and built.is_dir():
                shutil.copytree(built, cache, dirs_exist_ok=True, copy_function=_copy_new)
            if not os.access(cache, os.W_OK):
                raise OSError("not writable")
        except OSError as exc:
            fallback = Path(tempfile.gettempdir()) / "akidb-trt-cache" / self.manifest.key
            fallback.mkdir(parents=True, exist_ok=True)
            log.warning("TensorRT engine cache %s unusable (%s); using %s", cache, exc, fallback)
            cache = fallback
        inputs = [n for n in self.manifest.inputs] or ["input_ids", "attention_mask"]
        maxb, maxl = max(1, max_batch_size), self.max_length
        optl = min(maxl, 128)

        def shapes(b: int, s: int) -> str:
            return ",".join(f"{n}:{b}x{s}" for n in inputs)

        opts: dict[str, Any] = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": self.manifest.precision == "fp16",
            "trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(maxb, optl),
            "trt_profile_max_shapes": shapes(maxb, maxl),
        }
        return opts

    # -- tokenization --------------------------------------------------------------

    def prefix(self, input_type: str | None) -> str:
        if input_type == "query":
            return self.manifest.query_prefix
        if input_type == "document":
            return self.manifest.document_prefix
        return ""

    def tokenize(
        self, texts: Sequence[str], input_type: str | None = None, truncate: bool = True
    ) -> list[npt.NDArray[np.int64]]:
        """Token ids per text (special tokens added, prefix applied, truncated if asked)."""
        prefix = self.prefix(input_type)
        texts = [prefix + t for t in texts] if prefix else list(texts)
        tok = self._tok if truncate else self._tok_full
        encs = tok.encode_batch(texts) if len(texts) > 1 else [tok.encode(texts[0])]
        return self._checked([np.asarray(e.ids, dtype=np.int64) for e in encs], truncate)

    def _checked(
        self, seqs: list[npt.NDArray[np.int64]], truncate: bool
    ) -> list[npt.NDArray[np.int64]]:
        if truncate:
            return [s[: self.max_length] for s in seqs]
        for i, ids in enumerate(seqs):
            if len(ids) > self.max_length:
                raise TextTooLongError(i, len(ids), self.max_length)
        return seqs

    def token_ids(
        self, ids: Sequence[Sequence[int]], truncate: bool = True
    ) -> list[npt.NDArray[np.int64]]:
        """Token-id input in the model's vocabulary, taken as it is (special tokens too)."""
        return self._checked([np.asarray(s, dtype=np.int64) for s in ids], truncate)

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], truncate: bool = True
    ) -> list[npt.NDArray[np.int64]]:
        """Token ids of (query, document) pairs, as a cross-encoder reads them."""
        tok = self._tok if truncate else self._tok_full
        encs = tok.encode_batch([(query, d) for d in documents])
        return self._checked([np.asarray(e.ids, dtype=np.int64) for e in encs], truncate)

    def tokens(
        self, texts: Sequence[str], input_type: str | None, add_special_tokens: bool
    ) -> list[list[dict[str, Any]]]:
        """TEI's /tokenize: per text, each token's id, text, special flag, offsets."""
        prefix = self.prefix(input_type)
        encs = self._tok.encode_batch(
            [prefix + t for t in texts], add_special_tokens=add_special_tokens
        )
        out = []
        for text, enc in zip(texts, encs, strict=True):
            full = prefix + text
            row = []
            for tid, special, (start, stop) in zip(
                enc.ids, enc.special_tokens_mask, enc.offsets, strict=True
            ):
                row.append(
                    {
                        "id": int(tid),
                        "text": self._tok.id_to_token(tid) if special else full[start:stop],
                        "special": bool(special),
                        "start": None if special else int(start),
                        "stop": None if special else int(stop),
                    }
                )
            out.append(row)
        return out

    # -- inference -----------------------------------------------------------------

    def pad(self, seqs: Sequence[npt.NDArray[np.int64]]) -> Batch:
        n = len(seqs)
        if n == 1:  # nothing to pad (a lone request, the common case at low load)
            ids1 = np.asarray(seqs[0], dtype=np.int64).reshape(1, -1)
            return Batch(ids1, np.ones_like(ids1))
        longest = max(len(s) for s in seqs)
        ids = np.full((n, longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, longest), dtype=np.int64)
        for i, s in enumerate(seqs):
            k = len(s)
            if self.left_pad:
                ids[i, longest - k :] = s
                mask[i, longest - k :] = 1
            else:
                ids[i, :k] = s
                mask[i, :k] = 1
        return Batch(ids, mask)

    def _token_types(self, batch: Batch) -> npt.NDArray[np.int64]:
        if self.task != "rerank" or self.segment_sep is None:
            return np.zeros_like(batch.input_ids)
        # Type 1 from the token after the first separator on (padding masked out).
        sep = (batch.input_ids == self.segment_sep) & (batch.attention_mask == 1)
        after_first = (np.cumsum(sep, axis=1) - sep) >= 1
        return (after_first & (batch.attention_mask == 1)).astype(np.int64)

    def run(self, seqs: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        """One ORT run: pooled (not normalized) embeddings [len(seqs), dimension], or
        for a reranker the relevance logits [len(seqs), 1]."""
        batch = self.pad(seqs)
        feed = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = self._token_types(batch)
        (out,) = self.session.run([self.output_name], feed)
        if self.task == "rerank":
            return np.asarray(out, dtype=np.float32)[:, :1]
        return pool(out, batch.attention_mask, self.manifest.pooling)

    def embed(
        self,
        texts: Sequence[str],
        input_type: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
    ) -> npt.NDArray[np.float32]:
        """Synchronous convenience: tokenize, run as one batch, post-process."""
        from akidb_embed.model_server.pooling import truncate_dims

        pooled = self.run(self.tokenize(texts, input_type, truncate))
        norm = self.manifest.normalize if normalize is None else normalize
        return truncate_dims(pooled, dimensions, norm)

    def warmup_shapes(self, max_batch_size: int) -> list[tuple[int, int]]:
        """(texts, tokens) of the warm-up runs: the corners of what batches can be.

        One text short and at the length limit, a full batch of short texts: the first
        run of each sizes ONNX Runtime's arena and, on TensorRT, builds or loads the
        engine for the profile, so no request pays for it. On the CPU the long corner
        stops at CPU_WARMUP_MAX_TOKENS.
        """
        short = min(8, self.max_length)
        longest = self.max_length
        if self.providers[:1] == ["CPUExecutionProvider"]:
            longest = min(longest, CPU_WARMUP_MAX_TOKENS)
        shapes = [(1, short), (1, longest), (max(1, max_batch_size), short)]
        return list(dict.fromkeys(shapes))

    def warmup(self, batch_size: int = 8) -> float:
        """Run one batch per warm-up shape (see ``warmup_shapes``)."""
        t0 = time.perf_counter()
        filler = " ".join(["the quick brown fox jumps over the lazy dog"] * 64)
        ids = self.tokenize([filler])[0]  # truncated to max_length, special tokens kept
        self.warmed_shapes: list[tuple[int, int]] = []
        for texts, tokens in self.warmup_shapes(batch_size):
            seq = np.resize(ids, tokens)  # repeats the text's ids when it is shorter
            out = self.run([seq] * texts)
            self.warmed_shapes.append((int(out.shape[0]), int(seq.shape[0])))
        self.warmup_seconds = time.perf_counter() - t0
        self.warmed = True
        return self.warmup_seconds

    def quantization_ranges(self, dimension: int, normalize: bool) -> Ranges | None:
        """The int8/uint8 ranges calibrated at conversion for this output (None: none)."""
        key = ("normalized" if normalize else "raw", dimension)
        if key not in self._ranges:
            table = self.manifest.quantization.get(key[0], {}).get(str(dimension))
            self._ranges[key] = None if table is None else np.asarray(table, dtype=np.float32)
        return self._ranges[key]

    @property
    def dimension(self) -> int:
        return int(self.manifest.dimension)

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name,
            "family": m.family,
            "architecture": m.architecture,
            "source": m.source,
            "revision": m.revision,
            "key": m.key,
            "precision": m.precision,
            "pooling": m.pooling,
            "padding_side": m.padding_side,
            "normalize": m.normalize,
            "dimension": m.dimension,
            "dimensions": m.allowed_dimensions(),
            "task": m.task,
            "catalog_id": m.catalog_id,
            "quantization": sorted(m.quantization.get("normalized", {}), key=int),
            "max_length": m.max_length,
            "query_prefix": m.query_prefix,
            "document_prefix": m.document_prefix,
            "parity": None if m.parity is None else vars(m.parity),
            "artifact_dir": str(self.artifact_dir),
            "graph": self.model_file,
        }
