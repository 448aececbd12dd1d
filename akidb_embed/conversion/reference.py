"""The PyTorch reference side of the parity check: transformers + the same pooling.

Pooling here is written in torch ops on purpose: it is an independent implementation
of what the model server does in numpy (``akidb_embed.model_server.pooling``), so a bug
in either shows up as a parity failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Fixed texts for every parity check: short, long, unicode, code, numbers, an empty-ish
# string. They are embedded in one padded batch of mixed lengths, so a padding-side
# bug (e.g. last-token pooling reading a pad position) changes the figures.
PARITY_TEXTS: tuple[str, ...] = (
    "hello",
    # One- and two-token inputs (common queries) are where dynamic int8 drifts most: a
    # scheme that passed every longer text scored 0.988 on "hi".
    "hi",
    "x",
    "ok",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France, with an estimated "
    "population of about two million residents in an area of more than 105 square "
    "kilometres. Since the 17th century Paris has been one of the world's major "
    "centres of finance, diplomacy, commerce, culture, fashion and gastronomy. " * 3,
    "Kubernetes schedules pods onto nodes; an operator reconciles custom resources.",
    "Ünïcödé téxt with àccents, ß and ﬁ ligatures.",
    "日本語のテキストも埋め込みます。東京は日本の首都です。",
    "Привет, как дела? Это тест на русском языке.",
    "emoji 🚀🔥 and symbols ∑∫√ ≠ ≤ ≥",
    "def embed(texts: list[str]) -> np.ndarray:\n    return model.encode(texts)",
    "1234567890 3.14159 2.71828 -42 1e-9",
    "a",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z " * 8,
    "query: how do I convert a transformer checkpoint to ONNX?",
    "   leading and trailing spaces   ",
    "Short one.",
)


def torch_pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool [batch, seq, hidden] token states with a [batch, seq] 0/1 mask."""
    import torch

    m = mask.to(hidden.dtype)
    if mode == "mean":
        summed = (hidden * m.unsqueeze(-1)).sum(dim=1)
        return summed / m.sum(dim=1, keepdim=True).clamp(min=1e-9)
    rows = torch.arange(hidden.shape[0])
    if mode == "cls":
        first = mask.long().argmax(dim=1)
        return hidden[rows, first]
    if mode == "last-token":
        seq = mask.shape[1]
        last = seq - 1 - mask.long().flip(dims=[1]).argmax(dim=1)
        return hidden[rows, last]
    raise ValueError(f"unknown pooling mode {mode!r}")


def torch_reference(
    model: Any,
    feeds: dict[str, Any],
    pooling: str,
    normalize: bool,
) -> Any:
    """Pooled (and normalized) float32 embeddings from the transformers model."""
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.inference_mode():
        hidden = model(**tensors).last_hidden_state.float()
        pooled = torch_pool(hidden, tensors["attention_mask"], pooling)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled.numpy()
