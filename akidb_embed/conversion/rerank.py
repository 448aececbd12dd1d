"""Cross-encoder (reranker) conversion: sequence classification -> ONNX `logits`.

The same steps as an embedding model (tokenizer, dynamo export, fp16 / int8, parity
against PyTorch, manifest), with a (query, document) pair as the input and the one
relevance logit as the output. Parity: the largest difference of the relevance score
(the logit's sigmoid, what clients get by default) over fixed pairs of mixed lengths.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from akidb_embed.artifact import MODEL_FILE, TOKENIZER_FILE, ArtifactManifest, Parity
from akidb_embed.conversion.export import (
    ExportError,
    convert_fp16,
    export_onnx,
    quantize_int8,
)
from akidb_embed.conversion.parity import ParityError, load_tokenizer, ort_session
from akidb_embed.conversion.reference import PARITY_TEXTS
from akidb_embed.conversion.rules import ModelRules
from akidb_embed.conversion.source import ResolvedSource

if TYPE_CHECKING:
    from akidb_embed.conversion.convert import _Progress

OUTPUT = "logits"
# Largest allowed |score difference| (scores are sigmoids, in [0, 1]).
SCORE_THRESHOLDS = {"fp32": 1e-3, "fp16": 1e-2, "int8": 0.05}
# Fixed (query, document) pairs: each parity text against the next one.
PARITY_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (PARITY_TEXTS[i], PARITY_TEXTS[(i + 1) % len(PARITY_TEXTS)]) for i in range(len(PARITY_TEXTS))
)


def load_cross_encoder(checkpoint: Path) -> tuple[Any, list[str]]:
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(checkpoint), dtype=torch.float32, attn_implementation="eager"
        )
    except Exception as exc:
        raise ExportError(f"cannot load the cross-encoder from {checkpoint}: {exc}") from exc
    labels = int(model.config.num_labels)
    if labels != 1:
        raise ExportError(
            f"{checkpoint} classifies into {labels} labels; a reranker has one relevance logit"
        )
    model.eval()
    names = ["input_ids", "attention_mask"]
    if int(getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return model, names


def pair_feeds(
    tokenizer_path: Path, max_length: int, pairs: tuple[tuple[str, str], ...], names: list[str]
) -> dict[str, np.ndarray]:
    tok = load_tokenizer(tokenizer_path, max_length)
    encs = tok.encode_batch(list(pairs))
    feeds = {
        "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
    }
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=np.int64)
    return feeds


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64))))


def torch_logits(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits
    return np.asarray(out.float().numpy()[:, 0])


def onnx_logits(model_path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort_session(model_path)
    wanted = {i.name for i in session.get_inputs()}
    (out,) = session.run([OUTPUT], {k: v for k, v in feeds.items() if k in wanted})
    return np.asarray(out[:, 0])


def check_scores(
    reference: np.ndarray, candidate: np.ndarray, threshold: float, label: str
) -> Parity:
    if not np.all(np.isfinite(candidate)):
        raise ParityError("the ONNX cross-encoder produced non-finite logits")
    error = float(np.abs(_sigmoid(reference) - _sigmoid(candidate)).max())
    if error > threshold:
        raise ParityError(
            f"parity check failed: relevance scores differ by up to {error:.6f} > {threshold} "
            "from the PyTorch reference"
        )
    return Parity(
        min_cosine=None,
        mean_cosine=None,
        texts=len(reference),
        threshold=threshold,
        reference=label,
        max_abs_error=round(error, 6),
    )


def convert_cross_encoder(
    partial: Path,
    resolved: ResolvedSource,
    rules: ModelRules,
    precision: str,
    opset: int,
    key: str,
    parity_threshold: float | None,
    progress: _Progress,
) -> ArtifactManifest:
    import torch
    import transformers

    from akidb_embed.conversion.convert import build_manifest

    with progress.step(f"loading the cross-encoder {resolved.path}"):
        model, names = load_cross_encoder(resolved.path)
    feeds = pair_feeds(partial / TOKENIZER_FILE, rules.max_length, PARITY_PAIRS, names)
    fp32_path = partial / MODEL_FILE if precision == "fp32" else partial / "fp32" / MODEL_FILE
    with progress.step(f"exporting the cross-encoder (opset {opset}, output {OUTPUT})"):
        sample = {k: v[:2] for k, v in feeds.items()}
        actual_opset = export_onnx(model, names, sample, fp32_path, opset, output_name=OUTPUT)
    reference = torch_logits(model, feeds)
    del model
    notes: dict[str, str] = {}
    if precision == "fp16":
        with progress.step("converting to fp16 (fp32 inputs/outputs kept)"):
            convert_fp16(fp32_path, partial / MODEL_FILE)
    elif precision == "int8":
        with progress.step("quantizing to int8 (dynamic, per-channel QInt8)"):
            quantize_int8(fp32_path, partial / MODEL_FILE)
        notes["int8-scheme"] = "all"
    if fp32_path != partial / MODEL_FILE:
        shutil.rmtree(fp32_path.parent, ignore_errors=True)
    threshold = parity_threshold if parity_threshold is not None else SCORE_THRESHOLDS[precision]
    label = f"transformers {transformers.__version__} / torch {torch.__version__}"
    parity: Parity | None
    with progress.step(f"parity check of the relevance scores ({precision}, <= {threshold})"):
        try:
            parity = check_scores(
                reference, onnx_logits(partial / MODEL_FILE, feeds), threshold, label
            )
        except ParityError:
            raise
        except Exception as exc:
            if precision != "fp16":
                raise
            parity = None
            notes["parity"] = f"fp16 parity not checked: ONNX Runtime on CPU cannot run it ({exc})"
    return build_manifest(
        partial,
        resolved,
        rules,
        precision=precision,
        opset=actual_opset,
        key=key,
        inputs=names,
        output=OUTPUT,
        parity=parity,
        notes=notes,
        quantization={},
    )
