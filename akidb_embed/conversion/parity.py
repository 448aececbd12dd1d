"""Parity check: the ONNX artifact against the PyTorch reference, text by text.

Both sides get the same token ids, made by the artifact's own ``tokenizer.json``
through ``tokenizers`` (as the model server does), in one padded batch of mixed
lengths. The ONNX side is pooled with the model server's numpy pooling
(``akidb_embed.model_server.pooling``) — what clients will get — and the reference with
torch pooling (``reference.torch_pool``), so the check covers the pooling too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from akidb_embed.artifact import Parity
from akidb_embed.conversion.reference import PARITY_TEXTS, torch_reference

log = logging.getLogger("akidb_embed.conversion")

THRESHOLDS = {"fp32": 0.999, "fp16": 0.999, "int8": 0.99}


class ParityError(Exception):
    """The ONNX model's embeddings do not match the PyTorch reference."""


def load_tokenizer(tokenizer_path: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length=max_length)
    if tok.padding is None:
        tok.enable_padding()
    return tok


def tokenize(tok: Any, texts: Sequence[str], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """int64 feeds for the graph (padded to the longest text, on the tokenizer's side)."""
    encodings = tok.encode_batch(list(texts))
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    return feeds


def ort_session(model_path: Path, providers: Sequence[Any] | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(model_path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
    )


def onnx_embed(
    session: Any, feeds: dict[str, np.ndarray], pooling: str, normalize: bool
) -> np.ndarray:
    from akidb_embed.model_server.pooling import postprocess

    wanted = {i.name for i in session.get_inputs()}
    hidden = session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in wanted})[0]
    return postprocess(hidden, feeds["attention_mask"], pooling, normalize)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return np.asarray((a * b).sum(axis=-1) / np.maximum(na * nb, 1e-12))


class ParityReference:
    """The PyTorch side of the check, computed once, compared with any ONNX file."""

    def __init__(
        self,
        tokenizer_path: Path,
        torch_model: Any,
        *,
        input_names: Sequence[str],
        pooling: str,
        normalize: bool,
        max_length: int,
        texts: Sequence[str] = PARITY_TEXTS,
    ) -> None:
        import torch
        import transformers

        self.texts = list(texts)
        self.pooling = pooling
        self.normalize = normalize
        tok = load_tokenizer(tokenizer_path, max_length)
        self.feeds = tokenize(tok, self.texts, input_names)
        self.embeddings = torch_reference(torch_model, self.feeds, pooling, normalize)
        self.label = f"transformers {transformers.__version__} / torch {torch.__version__}"

    def cosines(self, model_path: Path) -> np.ndarray:
        """Per-text cosine of the ONNX model's embeddings with the reference."""
        candidate = onnx_embed(ort_session(model_path), self.feeds, self.pooling, self.normalize)
        if not np.all(np.isfinite(candidate)):
            raise ParityError(f"the ONNX model produced non-finite embeddings ({model_path})")
        return cosines(self.embeddings, candidate)

    def check(self, model_path: Path, threshold: float) -> Parity:
        """Compare per-text cosine; raise ParityError below ``threshold``."""
        return self.judge(self.cosines(model_path), threshold)

    def judge(self, cos: np.ndarray, threshold: float) -> Parity:
        worst = int(np.argmin(cos))
        parity = Parity(
            min_cosine=round(float(cos.min()), 6),
            mean_cosine=round(float(cos.mean()), 6),
            texts=len(self.texts),
            threshold=threshold,
            reference=self.label,
        )
        log.info(
            "parity: min cosine %.6f, mean %.6f over %d texts (threshold %.4f)",
            parity.min_cosine,
            parity.mean_cosine,
            len(self.texts),
            threshold,
        )
        if cos.min() < threshold:
            raise ParityError(
                f"parity check failed: min cosine {cos.min():.6f} < threshold {threshold} "
                f"(mean {cos.mean():.6f}; worst text #{worst}: {self.texts[worst][:60]!r}); "
                "the ONNX model does not reproduce the PyTorch reference"
            )
        return parity


def check_parity(
    model_path: Path,
    tokenizer_path: Path,
    torch_model: Any,
    *,
    input_names: Sequence[str],
    pooling: str,
    normalize: bool,
    max_length: int,
    threshold: float,
    texts: Sequence[str] = PARITY_TEXTS,
) -> Parity:
    """One-shot parity check of ``model_path``; raises ParityError below ``threshold``."""
    reference = ParityReference(
        tokenizer_path,
        torch_model,
        input_names=input_names,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        texts=texts,
    )
    return reference.check(model_path, threshold)
