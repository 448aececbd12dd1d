"""TensorRT engine warm-up: build and cache the engines at conversion time.

Where ONNX Runtime offers ``TensorrtExecutionProvider`` (the Jetson image), a session
with the engine cache under ``<artifact>/trt-cache`` is created and run at the
minimum, typical and maximum shapes, so the model server's first start finds the
engines built. Elsewhere this is skipped with a logged reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from akidb_embed.artifact import MODEL_FILE, ArtifactManifest

log = logging.getLogger("akidb_embed.conversion")

TRT_CACHE_DIR = "trt-cache"
TRT_PROVIDER = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class WarmResult:
    warmed: bool
    reason: str
    cache_dir: Path | None = None


def _profile_shapes(manifest: ArtifactManifest, max_batch: int) -> dict[str, tuple[int, int]]:
    opt_len = min(128, manifest.max_length)
    return {
        "min": (1, 1),
        "opt": (min(8, max_batch), opt_len),
        "max": (max_batch, manifest.max_length),
    }


def warm_tensorrt_engine(
    artifact_dir: Path, manifest: ArtifactManifest, max_batch: int = 32
) -> WarmResult:
    """Build the TensorRT engines into ``artifact_dir/trt-cache``, or say why not."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if TRT_PROVIDER not in available:
        reason = (
            f"TensorRT warm-up skipped: onnxruntime {ort.__version__} offers no "
            f"{TRT_PROVIDER} here (available: {', '.join(available)})"
        )
        log.info(reason)
        return WarmResult(False, reason)

    cache = Path(artifact_dir) / TRT_CACHE_DIR
    cache.mkdir(exist_ok=True)
    shapes = _profile_shapes(manifest, max_batch)

    def spec(which: str) -> str:
        batch, seq = shapes[which]
        return ",".join(f"{name}:{batch}x{seq}" for name in manifest.inputs)

    trt_options = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": manifest.precision == "fp16",
        "trt_int8_enable": False,
        "trt_profile_min_shapes": spec("min"),
        "trt_profile_opt_shapes": spec("opt"),
        "trt_profile_max_shapes": spec("max"),
    }
    log.info("building TensorRT engines into %s (shapes %s)", cache, shapes)
    session = ort.InferenceSession(
        str(Path(artifact_dir) / MODEL_FILE),
        providers=[(TRT_PROVIDER, trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    if TRT_PROVIDER not in session.get_providers():
        reason = f"TensorRT provider did not initialise (session uses {session.get_providers()})"
        log.warning(reason)
        return WarmResult(False, reason)
    for which, (batch, seq) in shapes.items():
        feeds = {
            name: (np.ones if name == "attention_mask" else np.zeros)((batch, seq), dtype=np.int64)
            for name in manifest.inputs
        }
        session.run([manifest.output], feeds)
        log.info("TensorRT warm-up at %s shape %dx%d done", which, batch, seq)
    return WarmResult(True, "engines cached", cache)
