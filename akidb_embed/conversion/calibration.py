"""Quantization ranges for the int8/uint8 output types, calibrated at conversion.

The converted model embeds fixed calibration texts (`CALIBRATION_TEXTS`, built from
templates so they cover many topics and lengths); the per-dimension minimum and maximum
of those embeddings, for every output dimension the model serves, normalized and raw,
are stored in the manifest (`ArtifactManifest.quantization`), and the model server maps
values onto 256 steps with them (`akidb_embed.api.encoding`). Retrieval quality of the
result is measured by `bench/output_types.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from akidb_embed.api.encoding import calibrate
from akidb_embed.artifact import Quantization
from akidb_embed.model_server.pooling import l2_normalize, pool

_SUBJECTS = (
    "The new railway line",
    "A small bakery in the old town",
    "Our quarterly sales report",
    "The patient's blood pressure",
    "Photosynthesis in green plants",
    "The city council",
    "This Python function",
    "The football team",
    "A rare species of orchid",
    "The central bank",
    "The Kubernetes operator",
    "Her latest novel",
    "The volcano on the island",
    "The customer support ticket",
    "Quantum entanglement",
    "The recipe for tomato soup",
)
_PREDICATES = (
    "was delayed because of heavy snow in the mountains.",
    "explains how energy flows through the system.",
    "raised interest rates by a quarter of a percentage point.",
    "won the championship after a dramatic penalty shoot-out.",
    "needs a fix: it crashes when the input list is empty.",
    "is described in detail in chapter three.",
    "costs less than expected, according to the latest estimates.",
    "What are the main causes of this, and how can it be prevented?",
    "was reviewed by experts from several universities.",
    "attracts thousands of visitors every summer.",
    "depends on temperature, light and the amount of water available.",
    "How does it compare with last year's results?",
    "restarts the pod when the readiness probe fails three times.",
    "is written in a clear and accessible style for young readers.",
    "must be approved before the end of the month.",
    "uses fresh basil, garlic and a little olive oil.",
)
CALIBRATION_TEXTS: tuple[str, ...] = tuple(
    f"{s} {p}" for s, p in itertools.product(_SUBJECTS, _PREDICATES)
)
BATCH = 32


def quantization_ranges(
    model_path: Path,
    tokenizer_path: Path,
    *,
    input_names: Sequence[str],
    pooling: str,
    max_length: int,
    dimensions: Sequence[int],
    texts: Sequence[str] = CALIBRATION_TEXTS,
) -> Quantization:
    from akidb_embed.conversion.parity import load_tokenizer, ort_session, tokenize

    session = ort_session(model_path)
    tok = load_tokenizer(tokenizer_path, max_length)
    wanted = {i.name for i in session.get_inputs()}
    rows = []
    for start in range(0, len(texts), BATCH):
        feeds = tokenize(tok, texts[start : start + BATCH], input_names)
        (hidden,) = session.run(
            ["last_hidden_state"], {k: v for k, v in feeds.items() if k in wanted}
        )
        rows.append(pool(hidden, feeds["attention_mask"], pooling))
    pooled = np.concatenate(rows)
    out: Quantization = {"normalized": {}, "raw": {}}
    for dim in dimensions:
        cut = pooled[:, :dim]
        for kind, vectors in (("raw", cut), ("normalized", l2_normalize(cut))):
            out[kind][str(dim)] = np.round(calibrate(vectors), 6).tolist()
    return out
