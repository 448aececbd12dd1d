"""PyTorch -> ONNX export, fp16 conversion and int8 dynamic quantization.

Exporter choice: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based
exporter). Measured with torch 2.15 / transformers 4.57 on this project:

* the legacy TorchScript exporter (``dynamo=False``) produces a BERT graph whose
  output is wrong for shapes other than the traced one (max abs error > 1.0: the
  attention-mask construction of transformers 4.57 gets baked in), and fails outright
  on Qwen3 (``IndexError: unordered_map::at``);
* the dynamo exporter gives max abs error ~1e-6 for both, with dynamic batch and
  sequence axes, and handles left-padded masks for Qwen3;
* optimum's exporter would add a second dependency surface for the same graph; the
  graph we need (``last_hidden_state`` only, fixed input names) is a ten-line wrapper.

The dynamo exporter emits opset 18 at the lowest, so that is the default opset; a
lower request is converted with ``onnx.version_converter`` and refused if that fails.
Models are exported with eager attention (no SDPA kernels inside the graph).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("akidb_embed.conversion")

DEFAULT_OPSET = 18
OUTPUT_NAME = "last_hidden_state"
TWO_GIB = 2 * 1024**3


class ExportError(Exception):
    """The ONNX export, fp16 conversion or quantization failed."""


def load_model(checkpoint: Path) -> tuple[Any, list[str]]:
    """The transformers base model in eval mode and the ONNX input names it takes."""
    import inspect

    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(
            str(checkpoint), dtype=torch.float32, attn_implementation="eager"
        )
    except Exception as exc:  # transformers raises many kinds for a bad checkpoint
        raise ExportError(f"cannot load the model from {checkpoint}: {exc}") from exc
    model.eval()
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and int(getattr(model.config, "type_vocab_size", 0) or 0) > 0:
        names.append("token_type_ids")
    return model, names


def _wrapper(model: Any, input_names: list[str], output_name: str) -> Any:
    import torch

    class OneOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            kwargs: dict[str, torch.Tensor] = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
            }
            if "token_type_ids" in input_names and token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return getattr(self.model(**kwargs), output_name)

    return OneOutput().eval()


def save_onnx(model: Any, path: Path) -> list[Path]:
    """Save one ONNX file (external data beside it only past 2 GiB). Returns the files."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    # ByteSize() itself fails past 2 GiB (protobuf's limit): count the weights instead.
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights < TWO_GIB - 64 * 1024**2 and model.ByteSize() < TWO_GIB:
        onnx.save_model(model, str(path))
        return [path]
    data = path.name + ".data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )
    return [path, path.parent / data]


def export_onnx(
    model: Any,
    input_names: list[str],
    sample: dict[str, Any],
    out_path: Path,
    opset: int = DEFAULT_OPSET,
    output_name: str = OUTPUT_NAME,
) -> int:
    """Export ``model`` to ``out_path``; returns the opset of the written graph.

    The graph's one output is the model output ``output_name`` (``last_hidden_state``;
    ``logits`` for a cross-encoder).

    ``sample`` holds int64 numpy arrays (a padded batch of two texts of different
    lengths) used to trace; batch and sequence axes are dynamic.
    """
    import onnx
    import torch

    wrapper = _wrapper(model, input_names, output_name)
    args = tuple(torch.from_numpy(sample[n]) for n in input_names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=131072)
    dynamic_shapes = {n: {0: batch, 1: seq} for n in input_names}
    scratch = out_path.parent / (out_path.name + ".export")
    scratch.mkdir(parents=True, exist_ok=True)
    raw = scratch / "model.onnx"
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.WARNING)
        # The exporter prints progress to stdout; keep stdout for the command's result.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(raw),
                input_names=input_names,
                output_names=[output_name],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=True,
                optimize=True,
            )
        graph = onnx.load(str(raw), load_external_data=True)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    actual = _default_opset(graph)
    if actual != opset:
        from onnx import version_converter

        try:
            graph = version_converter.convert_version(graph, opset)
        except Exception as exc:
            raise ExportError(
                f"the exporter wrote opset {actual} and converting to opset {opset} failed "
                f"({exc}); use --opset {actual} or higher"
            ) from exc
        actual = opset
    inputs = [i.name for i in graph.graph.input]
    outputs = [o.name for o in graph.graph.output]
    if inputs != input_names or outputs != [output_name]:
        raise ExportError(f"unexpected graph signature: inputs {inputs}, outputs {outputs}")
    save_onnx(graph, out_path)
    shutil.rmtree(scratch, ignore_errors=True)
    return actual


def _default_opset(graph: Any) -> int:
    for entry in graph.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("exported graph declares no default-domain opset")


# Ops kept in fp32 in an fp16 graph: normalizations and softmax sum over many values,
# where fp16's 10-bit mantissa (and its 65504 range) loses the result.
FP16_KEEP_FP32 = ("LayerNormalization", "SimplifiedLayerNormalization", "Softmax", "ReduceMean")


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """fp32 graph -> fp16 weights and compute, fp32 inputs/outputs kept (for GPUs)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(fp32_path), load_external_data=True)
    try:
        fp16 = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32]
        )
        # Casts inserted around the blocked ops can land after their consumers.
        from onnxruntime.transformers.onnx_model import OnnxModel

        sorted_model = OnnxModel(fp16)
        sorted_model.topological_sort()
        fp16 = sorted_model.model
    except Exception as exc:
        raise ExportError(f"fp16 conversion failed: {exc}") from exc
    save_onnx(fp16, out_path)


# int8 schemes, most compressed first. Dynamic quantization of every weight MatMul
# loses too much on small BERTs (all-MiniLM-L6-v2: min cosine 0.983 over the parity
# texts; the error builds up over the layers, no single layer is to blame), while
# keeping the feed-forward MatMuls in fp32 gives 0.994. Conversion tries these in
# order and keeps the first that passes the parity threshold.
INT8_SCHEMES: tuple[str, ...] = ("all", "keep-ffn-down", "keep-ffn")


def ffn_matmuls(fp32_path: Path, intermediate_size: int, scheme: str) -> list[str]:
    """Names of the feed-forward MatMul nodes a scheme keeps in fp32.

    Feed-forward weights are recognised by shape: [hidden, intermediate] (up / gate)
    and [intermediate, hidden] (down).
    """
    import onnx

    if scheme == "all":
        return []
    model = onnx.load(str(fp32_path), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        dims = shapes.get(node.input[1])
        if not dims or len(dims) != 2:
            continue
        down = dims[0] == intermediate_size and dims[1] != intermediate_size
        up = dims[1] == intermediate_size and dims[0] != intermediate_size
        if down or (up and scheme == "keep-ffn"):
            names.append(node.name)
    return names


def quantize_int8(fp32_path: Path, out_path: Path, exclude: list[str] | None = None) -> None:
    """Dynamic int8 quantization (QInt8 per-channel weight MatMuls and embeddings).

    ``exclude``: MatMul node names to keep in fp32.
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = (
        fp32_path.stat().st_size >= TWO_GIB
        or fp32_path.with_name(fp32_path.name + ".data").exists()
    )
    # quantize_dynamic logs a pre-processing hint at WARNING on the root logger.
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(max(level, logging.ERROR))
        quantize_dynamic(
            str(fp32_path),
            str(out_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # EmbedLayerNormalization: the word embeddings of a fused BERT graph.
            op_types_to_quantize=["MatMul", "Gather", "EmbedLayerNormalization"],
            nodes_to_exclude=list(exclude or []),
            use_external_data_format=big,
            # Shape inference does not type the outputs of fused contrib ops (Attention,
            # SkipLayerNormalization): they are float.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
        )
    except Exception as exc:
        raise ExportError(f"int8 quantization failed: {exc}") from exc
    finally:
        root.setLevel(level)
