"""Checkpoint -> converted artifact directory (ONNX + tokenizer + manifest).

``convert()`` is the one entry point (the CLI, the operator's conversion Job and the
tests call it). It writes into ``<out>.partial-<random>`` beside ``out`` and renames
into place only after the parity check passed, so a half-written or failed artifact is
never seen under ``out``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from akidb_embed import __version__
from akidb_embed.artifact import (
    CONVERTER_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    ArtifactError,
    ArtifactManifest,
    Parity,
    Quantization,
    artifact_key,
    file_digest,
    verify_files,
)
from akidb_embed.catalog import PRECISIONS
from akidb_embed.conversion.calibration import quantization_ranges
from akidb_embed.conversion.export import (
    DEFAULT_OPSET,
    INT8_SCHEMES,
    OUTPUT_NAME,
    ExportError,
    convert_fp16,
    export_onnx,
    ffn_matmuls,
    load_model,
    quantize_int8,
)
from akidb_embed.conversion.graphs import (
    CPU_MODEL_FILE,
    Candidate,
    choose,
    export_torchscript,
    fusable,
    fuse,
    save_cpu_graph,
    timing_feeds,
)
from akidb_embed.conversion.parity import THRESHOLDS, ParityError, ParityReference
from akidb_embed.conversion.rules import ModelRules, RulesError, resolve_rules
from akidb_embed.conversion.source import ResolvedSource, SourceError, resolve_source

log = logging.getLogger("akidb_embed.conversion")

# Tokenizer files copied from the source when present (tokenizer.json is required and
# is produced from a slow tokenizer when the source lacks it).
TOKENIZER_EXTRAS = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


class ConversionError(Exception):
    """A conversion failed; the message says why. No artifact was left behind."""


class AlreadyConverted(Exception):
    pass


class _Progress:
    """Log lines with the elapsed time of the whole conversion."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        t0 = time.monotonic()
        log.info("[%6.1fs] %s ...", self.elapsed, what)
        yield
        log.info("[%6.1fs] %s: done in %.1fs", self.elapsed, what, time.monotonic() - t0)


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"akidb-embed": __version__, "converter": CONVERTER_VERSION}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return versions


def write_tokenizer(checkpoint: Path, out_dir: Path, padding_side: str) -> None:
    """tokenizer.json (+ the other tokenizer files) with padding set for the model.

    The padding direction (left for last-token pooling) and pad token are written into
    tokenizer.json so a plain ``tokenizers.Tokenizer.from_file`` pads correctly.
    """
    from tokenizers import Tokenizer

    for extra in TOKENIZER_EXTRAS:
        if (checkpoint / extra).is_file():
            shutil.copyfile(checkpoint / extra, out_dir / extra)
    target = out_dir / TOKENIZER_FILE
    auto: Any = None
    try:
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(str(checkpoint), use_fast=True)
    except Exception as exc:
        if not (checkpoint / TOKENIZER_FILE).is_file():
            raise ConversionError(f"cannot load the tokenizer of {checkpoint}: {exc}") from exc
        log.warning("transformers cannot load the tokenizer (%s); using tokenizer.json as is", exc)
    if (checkpoint / TOKENIZER_FILE).is_file():
        shutil.copyfile(checkpoint / TOKENIZER_FILE, target)
    else:
        if auto is None or not getattr(auto, "is_fast", False):
            raise ConversionError(
                f"{checkpoint} has no tokenizer.json and its tokenizer cannot be converted "
                "to a fast tokenizer"
            )
        log.info("source has only a slow tokenizer; converting it to tokenizer.json")
        auto.backend_tokenizer.save(str(target))
    tok = Tokenizer.from_file(str(target))
    pad_token: str | None = None
    pad_id: int | None = None
    if auto is not None:
        pad_token = auto.pad_token or auto.eos_token
        pad_id = auto.convert_tokens_to_ids(pad_token) if pad_token else None
    if pad_token is None and tok.padding is not None:
        pad_token, pad_id = tok.padding["pad_token"], tok.padding["pad_id"]
    if pad_token is None or pad_id is None:
        raise ConversionError(
            f"the tokenizer of {checkpoint} has no pad or eos token; cannot pad batches"
        )
    tok.no_truncation()
    tok.enable_padding(direction=padding_side, pad_id=int(pad_id), pad_token=pad_token)
    tok.save(str(target))


def _sample_inputs(out_dir: Path, input_names: list[str], max_length: int) -> dict[str, Any]:
    from akidb_embed.conversion.parity import load_tokenizer, tokenize

    tok = load_tokenizer(out_dir / TOKENIZER_FILE, max_length)
    return tokenize(
        tok, ["a short text", "a rather longer sample text used for tracing"], input_names
    )


def _check_existing(out: Path, key: str, force: bool) -> ArtifactManifest | None:
    """The existing artifact when it is this very conversion (and not forced)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConversionError(f"{out} exists and is not a directory")
    if (out / MANIFEST_FILE).is_file():
        try:
            existing = ArtifactManifest.load(out)
        except ArtifactError as exc:
            if force:
                return None
            raise ConversionError(
                f"{out} holds an unreadable manifest ({exc}); pass --force to replace it"
            ) from exc
        if existing.key == key and not force:
            return existing
        if not force:
            raise ConversionError(
                f"{out} already holds a different artifact (key {existing.key}, this "
                f"conversion is {key}); pass --force to replace it"
            )
        return None
    if any(out.iterdir()) and not force:
        raise ConversionError(
            f"{out} exists, is not empty and is not an artifact; pass --force to replace it"
        )
    return None


def _install(partial: Path, out: Path) -> None:
    """Rename the finished partial directory into place (replacing ``out`` if forced)."""
    if out.exists():
        old = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
        os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, out)


def import_artifact(
    source: Path, out: Path, *, precision: str, force: bool = False
) -> ArtifactManifest:
    """Install an already converted artifact directory as ``out`` (checked, not reconverted).

    The copy gets this source's storage key, so the operator finds it where it looks.
    """
    src = source.expanduser().absolute()
    try:
        manifest = ArtifactManifest.load(src)
        verify_files(src, manifest)
    except ArtifactError as exc:
        raise ConversionError(f"{src} is not a usable converted artifact: {exc}") from exc
    if manifest.precision != precision:
        raise ConversionError(
            f"{src} is a {manifest.precision} artifact but precision {precision} was asked for"
        )
    # Keyed by the path as written, as the operator keys spec.source.path.
    key = artifact_key(str(source), "main", precision)
    existing = _check_existing(out, key, force)
    if existing is not None:
        log.info("already converted: %s holds %s (key %s)", out, existing.name, key)
        return existing
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.partial-{secrets.token_hex(4)}")
    try:
        shutil.copytree(src, partial)
        manifest.key = key
        manifest.save(partial)
        _install(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("imported the converted artifact %s -> %s (key %s)", src, out, key)
    return manifest


def convert(
    source: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    family: str | None = None,
    precision: str = "fp32",
    revision: str = "main",
    opset: int = DEFAULT_OPSET,
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    matryoshka_dimensions: list[int] | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    force: bool = False,
    parity_threshold: float | None = None,
    warm_tensorrt: bool = False,
    cache_dir: Path | None = None,
) -> ArtifactManifest:
    """Convert ``source`` (checkpoint dir or hub repo id) into the artifact ``out_dir``.

    Raises ``ConversionError`` (with the reason) on any failure; nothing is left at
    ``out_dir`` or in the partial directory then. If ``out_dir`` already holds the
    artifact of the same key, returns its manifest without converting ("already
    converted"), unless ``force``.
    """
    if precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {precision!r}; expected {'|'.join(PRECISIONS)}")
    out = Path(out_dir).expanduser().absolute()
    progress = _Progress()
    if (Path(source) / MANIFEST_FILE).is_file():
        return import_artifact(Path(source), out, precision=precision, force=force)
    try:
        with progress.step(f"resolving source {source}"):
            resolved: ResolvedSource = resolve_source(str(source), revision, cache_dir)
        rules: ModelRules = resolve_rules(
            resolved.path,
            resolved.source,
            resolved.is_hub,
            name=name,
            family=family,
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            matryoshka_dimensions=matryoshka_dimensions,
            query_prefix=query_prefix,
            document_prefix=document_prefix,
        )
    except (SourceError, RulesError) as exc:
        raise ConversionError(str(exc)) from exc
    # The default opset is left out of the key, so the key is the contract's
    # artifact_key(source, revision, precision) that the operator computes.
    key = artifact_key(
        resolved.source, resolved.revision, precision, None if opset == DEFAULT_OPSET else opset
    )
    existing = _check_existing(out, key, force)
    if existing is not None:
        log.info("already converted: %s holds %s (key %s)", out, existing.name, key)
        if warm_tensorrt:
            from akidb_embed.conversion.tensorrt import warm_tensorrt_engine

            warm_tensorrt_engine(out, existing)
        return existing

    log.info(
        "converting %s (%s, %s pooling, %s padding, dim %d, max length %d) to %s %s",
        resolved.source,
        rules.architecture,
        rules.pooling,
        rules.padding_side,
        rules.dimension,
        rules.max_length,
        precision,
        out,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.partial-{secrets.token_hex(4)}")
    partial.mkdir()
    try:
        manifest = _convert_into(
            partial, resolved, rules, precision, opset, key, parity_threshold, progress
        )
        with progress.step("writing the artifact"):
            manifest.save(partial)
            _install(partial, out)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, ConversionError):
            raise
        if isinstance(exc, ParityError | ExportError | SourceError | RulesError | OSError):
            raise ConversionError(str(exc)) from exc
        if isinstance(exc, Exception):  # e.g. a tokenizer or ONNX Runtime error
            raise ConversionError(f"{exc.__class__.__name__}: {exc}") from exc
        raise
    log.info("[%6.1fs] converted %s -> %s", progress.elapsed, resolved.source, out)
    if warm_tensorrt:
        from akidb_embed.conversion.tensorrt import warm_tensorrt_engine

        warm_tensorrt_engine(out, manifest)
    return manifest


def _convert_into(
    partial: Path,
    resolved: ResolvedSource,
    rules: ModelRules,
    precision: str,
    opset: int,
    key: str,
    parity_threshold: float | None,
    progress: _Progress,
) -> ArtifactManifest:
    if rules.task == "rerank":
        from akidb_embed.conversion.rerank import convert_cross_encoder

        with progress.step("loading and copying the tokenizer"):
            write_tokenizer(resolved.path, partial, rules.padding_side)
        return convert_cross_encoder(
            partial, resolved, rules, precision, opset, key, parity_threshold, progress
        )
    return _convert_embedding(
        partial, resolved, rules, precision, opset, key, parity_threshold, progress
    )


def _convert_embedding(
    partial: Path,
    resolved: ResolvedSource,
    rules: ModelRules,
    precision: str,
    opset: int,
    key: str,
    parity_threshold: float | None,
    progress: _Progress,
) -> ArtifactManifest:
    with progress.step("loading and copying the tokenizer"):
        write_tokenizer(resolved.path, partial, rules.padding_side)
    with progress.step(f"loading {resolved.path}"):
        model, input_names = load_model(resolved.path)
        config_dim = getattr(model.config, "hidden_size", rules.dimension)
        if config_dim != rules.dimension:
            raise ConversionError(f"model hidden size {config_dim} != dimension {rules.dimension}")
    # The exporter's graph goes to a scratch folder; what ends up in the artifact is
    # decided below (the portable model.onnx, the CPU graph chosen by measurement).
    scratch = partial / "graphs"
    fp32_path = scratch / MODEL_FILE
    with progress.step(
        f"exporting the ONNX graph (opset {opset}, inputs {', '.join(input_names)})"
    ):
        sample = _sample_inputs(partial, input_names, rules.max_length)
        actual_opset = export_onnx(model, input_names, sample, fp32_path, opset)
    threshold = parity_threshold if parity_threshold is not None else THRESHOLDS[precision]
    reference = ParityReference(
        partial / TOKENIZER_FILE,
        model,
        input_names=input_names,
        pooling=rules.pooling,
        normalize=rules.normalize,
        max_length=rules.max_length,
    )
    notes: dict[str, str] = {}
    cpu_source: Path | None = None  # the graph model.ort-cpu.onnx is made from
    if precision == "fp16":
        with progress.step("converting to fp16 (fp32 inputs/outputs, norms and softmax kept)"):
            convert_fp16(fp32_path, partial / MODEL_FILE)
    else:
        with progress.step("choosing the CPU graph (exporters x fusions, parity, timing)"):
            best, graph_notes, passing = _choose_cpu_graph(
                model, input_names, sample, fp32_path, opset, reference, partial, threshold
            )
            notes.update(graph_notes)
        if precision == "fp32":
            shutil.copyfile(fp32_path, partial / MODEL_FILE)
            if fp32_path.with_name(fp32_path.name + ".data").exists():
                _copy_external(fp32_path, partial / MODEL_FILE)
            cpu_source = best
        else:
            with progress.step("choosing the int8 graph (graphs x schemes, parity, timing)"):
                int8 = _choose_int8(
                    passing or [Candidate("dynamo", fp32_path)],
                    model,
                    reference,
                    threshold,
                    partial,
                    notes,
                )
            shutil.copyfile(int8, partial / MODEL_FILE)
            cpu_source = partial / MODEL_FILE
    cpu_model = ""
    if cpu_source is not None:
        with progress.step("saving the ONNX Runtime-optimized CPU graph"):
            if save_cpu_graph(cpu_source, partial / CPU_MODEL_FILE):
                cpu_model = CPU_MODEL_FILE
            else:
                notes["cpu-graph"] = "none: the graph is over 2 GiB (the server optimizes at load)"
    shutil.rmtree(scratch, ignore_errors=True)

    parity: Parity | None
    with progress.step(f"parity check against PyTorch ({precision}, threshold {threshold})"):
        try:
            parity = reference.check(partial / MODEL_FILE, threshold)
            if cpu_model:  # the graph the server runs on a CPU is held to the same bar
                cpu_parity = reference.check(partial / cpu_model, threshold)
                if (cpu_parity.min_cosine or 0.0) < (parity.min_cosine or 0.0):
                    parity = cpu_parity
        except ParityError:
            raise
        except Exception as exc:
            if precision != "fp16":
                raise ConversionError(f"cannot run the converted model: {exc}") from exc
            # fp16 graphs are for GPUs; some CPU builds of ONNX Runtime lack fp16 kernels.
            parity = None
            notes["parity"] = f"fp16 parity not checked: ONNX Runtime on CPU cannot run it ({exc})"
            log.warning("%s", notes["parity"])
    del model
    quantization: Quantization = {}
    if parity is not None:
        with progress.step("calibrating the int8/uint8 output ranges"):
            quantization = quantization_ranges(
                partial / MODEL_FILE,
                partial / TOKENIZER_FILE,
                input_names=input_names,
                pooling=rules.pooling,
                max_length=rules.max_length,
                dimensions=sorted({rules.dimension, *rules.matryoshka_dimensions}),
            )
    return build_manifest(
        partial,
        resolved,
        rules,
        precision=precision,
        opset=actual_opset,
        key=key,
        inputs=input_names,
        output=OUTPUT_NAME,
        parity=parity,
        notes=notes,
        quantization=quantization,
        cpu_model=cpu_model,
    )


def build_manifest(
    partial: Path,
    resolved: ResolvedSource,
    rules: ModelRules,
    *,
    precision: str,
    opset: int,
    key: str,
    inputs: list[str],
    output: str,
    parity: Parity | None,
    notes: dict[str, str],
    quantization: Quantization,
    cpu_model: str = "",
) -> ArtifactManifest:
    """The manifest of the files in `partial` (digests of every file but the manifest)."""
    files = {
        p.relative_to(partial).as_posix(): file_digest(p)
        for p in sorted(partial.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    return ArtifactManifest(
        name=rules.name,
        family=rules.family,
        architecture=rules.architecture,
        pooling=rules.pooling,
        padding_side=rules.padding_side,
        normalize=rules.normalize,
        dimension=rules.dimension,
        max_length=rules.max_length,
        precision=precision,
        opset=opset,
        source=resolved.source,
        revision=resolved.revision,
        key=key,
        inputs=list(inputs),
        output=output,
        matryoshka_dimensions=list(rules.matryoshka_dimensions),
        task=rules.task,
        catalog_id=rules.catalog_name or "",
        quantization=quantization,
        query_prefix=rules.query_prefix,
        document_prefix=rules.document_prefix,
        files=files,
        cpu_model=cpu_model,
        parity=parity,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        tool_versions={**_tool_versions(), **notes},
    )


def _copy_external(src: Path, dst: Path) -> None:
    shutil.copyfile(src.with_name(src.name + ".data"), dst.with_name(dst.name + ".data"))


def _choose_cpu_graph(
    model: Any,
    input_names: list[str],
    sample: dict[str, Any],
    dynamo_path: Path,
    opset: int,
    reference: ParityReference,
    partial: Path,
    threshold: float,
) -> tuple[Path, dict[str, str], list[Candidate]]:
    """The fastest fp32 graph for ONNX Runtime on CPU that passes parity (see graphs.py),
    and all that pass."""
    from akidb_embed.conversion.parity import load_tokenizer, tokenize

    candidates = [Candidate("dynamo", dynamo_path)]
    config = model.config
    if fusable(config):
        heads, hidden = int(config.num_attention_heads), int(config.hidden_size)
        work = dynamo_path.parent
        try:
            fuse(dynamo_path, work / "dynamo-fused.onnx", heads, hidden)
            candidates.append(Candidate("dynamo+fusion", work / "dynamo-fused.onnx"))
            export_torchscript(model, input_names, sample, work / "torchscript.onnx", opset)
            fused = fuse(work / "torchscript.onnx", work / "torchscript-fused.onnx", heads, hidden)
            log.info("fusions in the TorchScript graph: %s", fused)
            candidates.append(Candidate("torchscript+fusion", work / "torchscript-fused.onnx"))
        except Exception as exc:  # a candidate that cannot be built is just not a candidate
            log.warning("graph candidate failed (%s: %s); not considered", type(exc).__name__, exc)
    tok = load_tokenizer(partial / TOKENIZER_FILE, 512)
    feeds = timing_feeds(lambda texts: tokenize(tok, texts, input_names))
    try:
        best, notes = choose(candidates, reference.cosines, threshold, feeds)
    except ValueError:
        # None passed: keep the exporter's graph; the parity check below says by how much.
        return dynamo_path, {"cpu-graph": "dynamo (no candidate passed parity)"}, []
    passing = [c for c in candidates if c.min_cosine >= threshold]
    return best.path, notes, passing


def _choose_int8(
    graphs: list[Candidate],
    model: Any,
    reference: ParityReference,
    threshold: float,
    partial: Path,
    notes: dict[str, str],
) -> Path:
    """int8 of each fp32 graph with its most compressed scheme that passes parity, then
    the fastest of those (or, when none passes, the closest: the parity check refuses it).
    """
    from akidb_embed.conversion.parity import load_tokenizer, tokenize

    intermediate = int(getattr(model.config, "intermediate_size", 0) or 0)
    work = graphs[0].path.parent
    passing: list[Candidate] = []
    closest: tuple[float, Candidate] | None = None
    for graph in graphs:
        for scheme in INT8_SCHEMES:
            exclude = ffn_matmuls(graph.path, intermediate, scheme)
            if scheme != "all" and not exclude:
                continue
            out = work / f"int8-{graph.name.replace('+', '-')}-{scheme}.onnx"
            try:
                quantize_int8(graph.path, out, exclude)
            except ExportError as exc:
                log.warning("int8 of %s failed (%s); not considered", graph.name, exc)
                break
            cand = Candidate(f"{graph.name} int8 {scheme}", out)
            cand.min_cosine = float(reference.cosines(out).min())
            log.info("%s: min cosine %.6f (threshold %.4f)", cand.name, cand.min_cosine, threshold)
            if closest is None or cand.min_cosine > closest[0]:
                closest = (cand.min_cosine, cand)
            if cand.min_cosine >= threshold:
                passing.append(cand)
                break
    if not passing:
        if closest is None:
            raise ExportError("int8 quantization failed for every graph")
        notes["int8-scheme"] = closest[1].name
        return closest[1].path
    tok = load_tokenizer(partial / TOKENIZER_FILE, 512)
    feeds = timing_feeds(lambda texts: tokenize(tok, texts, reference_inputs(reference)))
    cos = {c.path: c.min_cosine for c in passing}
    best, choice = choose(passing, lambda path: np.array([cos[path]]), threshold, feeds)
    notes["int8-scheme"] = best.name.rsplit(" ", 1)[-1]
    notes["cpu-graph"] = best.name
    notes["cpu-graph-timings"] = choice["cpu-graph-timings"]
    return best.path


def reference_inputs(reference: ParityReference) -> list[str]:
    return list(reference.feeds)
