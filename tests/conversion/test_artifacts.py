"""Converted artifacts reproduce their references (real weights, real ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from akidb_embed.artifact import (
    MODEL_FILE,
    TOKENIZER_FILE,
    ArtifactManifest,
    artifact_key,
    verify_files,
)
from akidb_embed.conversion.parity import load_tokenizer, ort_session, tokenize

from .helpers import TEXTS, artifact_embed, row_cosines

pytestmark = pytest.mark.slow


def test_minilm_matches_sentence_transformers(minilm_artifact: Path, minilm_checkpoint: Path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_checkpoint), device="cpu")
    expected = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = artifact_embed(minilm_artifact, TEXTS)
    assert got.shape == (len(TEXTS), 384)
    cos = row_cosines(expected, got)
    assert cos.min() >= 0.999, cos
    # Different texts must not collapse to one vector (the check above would then be weak).
    assert row_cosines(got[:1].repeat(len(TEXTS), 0), got)[1:].max() < 0.9


def test_minilm_manifest(minilm_artifact: Path, minilm_checkpoint: Path):
    m = ArtifactManifest.load(minilm_artifact)
    assert (m.name, m.family, m.architecture) == (
        "all-minilm-l6-v2",
        "sentence-transformers",
        "bert",
    )
    assert (m.pooling, m.padding_side, m.normalize) == ("mean", "right", True)
    assert (m.dimension, m.max_length, m.precision) == (384, 256, "fp32")
    assert m.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert m.output == "last_hidden_state"
    assert m.source == str(minilm_checkpoint)
    # The contract's key: what the operator computes from the EmbeddingModel spec.
    assert m.key == artifact_key(str(minilm_checkpoint), "main", "fp32")
    assert minilm_artifact.name.startswith(m.key)
    assert m.opset == 18
    assert m.parity is not None and m.parity.min_cosine >= 0.999 and m.parity.texts >= 16
    assert m.parity.threshold == 0.999
    assert {"model.onnx", "tokenizer.json"} <= set(m.files)
    assert m.created and m.tool_versions["onnxruntime"] and m.tool_versions["torch"]
    verify_files(minilm_artifact, m)
    graph = onnx.load(str(minilm_artifact / MODEL_FILE))
    onnx.checker.check_model(graph)
    # Dynamic batch and sequence axes on every input and on the output.
    for value in [*graph.graph.input, *graph.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert not dims[0].HasField("dim_value") and not dims[1].HasField("dim_value"), value


def test_int8_parity_recorded(minilm_int8_artifact: Path, minilm_artifact: Path):
    from sentence_transformers import SentenceTransformer

    m = ArtifactManifest.load(minilm_int8_artifact)
    assert m.precision == "int8"
    assert m.parity is not None and m.parity.threshold == 0.99
    assert m.parity.min_cosine >= 0.99
    assert m.tool_versions["int8-scheme"] in ("all", "keep-ffn-down", "keep-ffn")
    graph = onnx.load(str(minilm_int8_artifact / MODEL_FILE))
    ops = {n.op_type for n in graph.graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    int8_weights = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights
    fp32_size = (minilm_artifact / MODEL_FILE).stat().st_size
    assert (minilm_int8_artifact / MODEL_FILE).stat().st_size < 0.6 * fp32_size
    # Independently of our own check: against sentence-transformers.
    st = SentenceTransformer(str(Path(m.source)), device="cpu")
    expected = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert row_cosines(expected, artifact_embed(minilm_int8_artifact, TEXTS)).min() >= 0.99


def test_tiny_bert_cls_matches_torch(tiny_bert_artifact: Path, tiny_bert_checkpoint: Path):
    import torch
    from transformers import AutoTokenizer, BertModel

    m = ArtifactManifest.load(tiny_bert_artifact)
    assert (m.family, m.pooling, m.padding_side, m.dimension) == ("bge", "cls", "right", 32)
    assert m.query_prefix.startswith("Represent this sentence")
    model = BertModel.from_pretrained(str(tiny_bert_checkpoint)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_checkpoint))
    expected = []
    for text in TEXTS:  # one by one: no padding involved on the reference side
        enc = tok(text, return_tensors="pt", truncation=True, max_length=m.max_length)
        with torch.no_grad():
            cls = model(**enc).last_hidden_state[0, 0]
        expected.append(torch.nn.functional.normalize(cls, dim=-1).numpy())
    got = artifact_embed(tiny_bert_artifact, TEXTS)
    assert row_cosines(np.stack(expected), got).min() >= 0.999


def _qwen3_reference(checkpoint: Path, artifact: Path, texts: list[str]) -> np.ndarray:
    """Qwen3Model on each text alone (no padding), state of the final (EOS) token."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(checkpoint)).eval()
    tok = Tokenizer.from_file(str(artifact / TOKENIZER_FILE))
    tok.enable_truncation(max_length=ArtifactManifest.load(artifact).max_length)
    out = []
    for text in texts:
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            last = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        out.append(torch.nn.functional.normalize(last[0, -1], dim=-1).numpy())
    return np.stack(out)


def test_tiny_qwen3_last_token_left_padding(tiny_qwen3_artifact: Path, tiny_qwen3_checkpoint: Path):
    m = ArtifactManifest.load(tiny_qwen3_artifact)
    assert (m.architecture, m.pooling, m.padding_side) == ("qwen3", "last-token", "left")
    assert m.inputs == ["input_ids", "attention_mask"]
    assert m.matryoshka_dimensions == [16, 32, 64]
    assert m.query_prefix.startswith("Instruct: ")

    # The artifact's tokenizer pads on the left and ends every text with EOS.
    tok = load_tokenizer(tiny_qwen3_artifact / TOKENIZER_FILE, m.max_length)
    eos = tok.token_to_id("<|endoftext|>")
    encs = tok.encode_batch(TEXTS)
    assert all(e.ids[-1] == eos and e.attention_mask[-1] == 1 for e in encs)
    assert encs[0].attention_mask[0] == 0  # the short text is padded at the front

    batch = artifact_embed(tiny_qwen3_artifact, TEXTS)  # one padded batch, mixed lengths
    single = np.concatenate([artifact_embed(tiny_qwen3_artifact, [t]) for t in TEXTS])
    assert row_cosines(batch, single).min() >= 0.9999
    reference = _qwen3_reference(tiny_qwen3_checkpoint, tiny_qwen3_artifact, TEXTS)
    assert row_cosines(reference, batch).min() >= 0.999

    # Left padding matters: pad on the right and read the final position (what
    # last-token pooling would do with a right-padded batch) and short texts go wrong.
    tok.enable_padding(direction="right", pad_id=eos, pad_token="<|endoftext|>")
    feeds = tokenize(tok, TEXTS, m.inputs)
    session = ort_session(tiny_qwen3_artifact / MODEL_FILE)
    full_mask = np.ones_like(feeds["attention_mask"])
    hidden = session.run(["last_hidden_state"], feeds)[0]
    from akidb_embed.model_server.pooling import l2_normalize, last_token_pool

    wrong = l2_normalize(last_token_pool(hidden, full_mask))
    cos = row_cosines(reference, wrong)
    longest = int(np.argmax([sum(e.attention_mask) for e in encs]))
    assert cos[longest] >= 0.999  # no padding there: the same
    assert cos.min() < 0.9, cos  # padded texts: the final position is a pad, not the EOS


def test_converted_artifact_as_source_is_imported_under_its_key(
    tiny_bert_artifact: Path, tmp_path: Path
):
    """DESIGN: spec.source.path may name an already converted ONNX directory."""
    import shutil

    from akidb_embed.artifact import ArtifactManifest, artifact_key, verify_files
    from akidb_embed.conversion import convert
    from akidb_embed.conversion.convert import ConversionError

    src = tmp_path / "prebuilt"
    shutil.copytree(tiny_bert_artifact, src)
    out = tmp_path / "store" / "k"
    manifest = convert(str(src), out)
    assert manifest.key == artifact_key(str(src), "main", "fp32")
    stored = ArtifactManifest.load(out)
    assert stored.key == manifest.key
    verify_files(out, stored)  # files copied intact
    assert convert(str(src), out).key == manifest.key  # idempotent
    with pytest.raises(ConversionError, match="fp32 artifact but precision int8"):
        convert(str(src), tmp_path / "other", precision="int8")
    (src / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(ConversionError, match="not a usable converted artifact"):
        convert(str(src), tmp_path / "third")
