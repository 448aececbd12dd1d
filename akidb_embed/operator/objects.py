"""Kubernetes objects the operator creates, as plain dicts (no client, no I/O).

The EmbeddingModel body in, a Deployment / Job / status patch out. Handlers send these
to the API server as they are; tests compare them as data.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from akidb_embed import k8s
from akidb_embed.artifact import artifact_key
from akidb_embed.catalog import FAMILIES
from akidb_embed.operator.capacity import pod_resources
from akidb_embed.operator.config import OperatorConfig
from akidb_embed.operator.placement import PENDING, desired_replicas

Body = dict[str, Any]

CONVERTER_APP = "akidb-converter"
LABEL_ARTIFACT_KEY = f"{k8s.GROUP}/artifact-key"
DEFAULT_REVISION = "main"
MODEL_VOLUME = "models"
HF_CACHE_VOLUME = "hf-cache"
SOURCE_VOLUME = "source"
SCRATCH_VOLUME = "tmp"
TRT_CACHE_VOLUME = "trt-cache"
# Fixed paths inside the pods (the node paths come from the operator's config).
SOURCE_MOUNT = "/var/run/akidb/source"
SCRATCH_MOUNT = "/tmp"
TRT_CACHE_MOUNT = "/var/cache/akidb/trt-cache"
TRT_CACHE_ENV = "AKIDB_TRT_CACHE_DIR"
# The images' user (Dockerfile.*): node folders the pods write must belong to it.
APP_UID = 10001
DEFAULT_PROVIDERS = ("TensorRT", "CUDA", "CPU")
# Kubernetes object names used as label values must fit in 63 characters.
_MAX_NAME = 63

# Condition types.
CONVERTED = "Converted"
READY = "Ready"
CAPACITY_EXHAUSTED = "CapacityExhausted"


class SourceRefused(ValueError):
    """spec.source.path lies outside the operator's --source-root: never mounted."""


@dataclass(frozen=True)
class Source:
    """Where a model comes from, as the conversion CLI and the artifact key take it."""

    location: str  # hub repo id or absolute path on the node
    revision: str
    is_repo: bool


def source_of(spec: Body) -> Source:
    src = spec.get("source") or {}
    if src.get("repo"):
        return Source(src["repo"], src.get("revision") or DEFAULT_REVISION, True)
    if src.get("path"):
        return Source(src["path"], DEFAULT_REVISION, False)
    raise ValueError("spec.source needs repo or path")


def source_host_path(config: OperatorConfig, path: str) -> str:
    """The node folder of a spec.source.path, which must lie inside config.source_root.

    Checked on the text (the operator has no view of the node): absolute, no '..'
    segment, strictly below the root. What the root holds is the admin's to keep safe.
    """
    root = config.source_root
    if not path.startswith("/") or ".." in path.split("/"):
        raise SourceRefused(
            f"spec.source.path {path!r} must be an absolute path without '..' inside "
            f"the source root {root}"
        )
    host = posixpath.normpath(path)
    if host == root or posixpath.commonpath([root, host]) != root:
        raise SourceRefused(
            f"spec.source.path {path!r} is outside the source root {root}: the operator "
            f"mounts only checkpoints below {root}/ (operator flag --source-root)"
        )
    return host


def precision_of(spec: Body) -> str:
    return str(spec.get("precision") or "fp32")


def model_key(spec: Body) -> str:
    """Artifact key of this spec: what the conversion Job writes and the server loads."""
    src = source_of(spec)
    return artifact_key(src.location, src.revision, precision_of(spec))


def artifact_path(config: OperatorConfig, key: str) -> str:
    return f"{config.model_store}/{key}"


def _truncate(name: str, room: int) -> str:
    return name[:room].rstrip("-.")


def deployment_name(model: str) -> str:
    return _truncate(f"model-{model}", _MAX_NAME)


def conversion_job_name(model: str, key: str, generation: int) -> str:
    """One Job per (spec generation, artifact key): editing the spec retries a failure."""
    suffix = f"-{key[:8]}-g{generation}"
    return _truncate(f"convert-{model}", _MAX_NAME - len(suffix)) + suffix


def model_labels(model: str) -> dict[str, str]:
    return {
        k8s.LABEL_NAME: k8s.MODEL_SERVER_APP,
        k8s.LABEL_PART_OF: k8s.PART_OF,
        k8s.LABEL_MODEL: model,
    }


def owner_reference(body: Body) -> dict[str, Any]:
    """Makes the garbage collector delete our objects with their EmbeddingModel."""
    return {
        "apiVersion": k8s.API_VERSION,
        "kind": k8s.KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _env_list(config: OperatorConfig, **extra: str) -> list[dict[str, Any]]:
    merged = {**config.pod_env, **extra}
    return [{"name": k, "value": v} for k, v in sorted(merged.items())]


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Non-root, no privileges, read-only root: scratch goes to the /tmp emptyDir."""
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# HOME and caches of torch, triton, Hugging Face helpers: the writable scratch folder.
SCRATCH_ENV = {"HOME": SCRATCH_MOUNT, "TMPDIR": SCRATCH_MOUNT, "XDG_CACHE_HOME": "/tmp/.cache"}


def _scratch_volume(size: str) -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": size}}


def _scratch_mount() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT}


def uses_tensorrt(spec: Body) -> bool:
    return "TensorRT" in (spec.get("executionProviders") or DEFAULT_PROVIDERS)


def _store_volume(config: OperatorConfig) -> dict[str, Any]:
    return {
        "name": MODEL_VOLUME,
        "hostPath": {"path": config.model_store, "type": "DirectoryOrCreate"},
    }


def _resources(spec: Body, config: OperatorConfig) -> dict[str, Any]:
    wanted = spec.get("resources") or {}
    memory = str(wanted.get("memory", "512Mi"))
    requests: dict[str, str] = {"memory": memory}
    if wanted.get("cpu"):
        requests["cpu"] = str(wanted["cpu"])
    # The node's model slots and memory budget, enforced by the scheduler (capacity.py);
    # extended resources need limits = requests.
    slots = pod_resources(memory, config.memory_budget)
    # Memory limit = request: the budget the placement counts is what the pod may use.
    return {
        "requests": {**requests, **slots},
        "limits": {"memory": memory, **slots},
    }


def server_command(body: Body, config: OperatorConfig) -> list[str]:
    spec = body["spec"]
    name = body["metadata"]["name"]
    providers = spec.get("executionProviders") or list(DEFAULT_PROVIDERS)
    return [
        "akidb-embed",
        "serve",
        artifact_path(config, model_key(spec)),
        "--host",
        "$(POD_IP)",
        "--port",
        str(k8s.MODEL_SERVER_PORT),
        "--name",
        name,
        "--providers",
        ",".join(providers),
        "--max-batch-size",
        str(spec.get("maxBatchSize", 32)),
        "--max-batch-tokens",
        str(spec.get("maxBatchTokens", 16384)),
    ]


def model_deployment(body: Body, config: OperatorConfig, replicas: int) -> Body:
    """The model-server Deployment: 0 replicas in Standby, 1 when active."""
    name = body["metadata"]["name"]
    labels = model_labels(name)
    probe_port = k8s.MODEL_SERVER_PORT_NAME
    spec = body["spec"]
    env = dict(SCRATCH_ENV)
    mounts: list[dict[str, Any]] = [
        {"name": MODEL_VOLUME, "mountPath": config.model_store, "readOnly": True},
        _scratch_mount(),
    ]
    volumes: list[dict[str, Any]] = [_store_volume(config), _scratch_volume("1Gi")]
    if uses_tensorrt(spec):
        # The store is read-only here: engines are built (or copied from the
        # converter's warm ones) into this artifact's folder of the node's TRT cache.
        env[TRT_CACHE_ENV] = f"{TRT_CACHE_MOUNT}/{model_key(spec)}"
        mounts.append({"name": TRT_CACHE_VOLUME, "mountPath": TRT_CACHE_MOUNT})
        volumes.append(
            {
                "name": TRT_CACHE_VOLUME,
                "hostPath": {"path": config.trt_cache, "type": "DirectoryOrCreate"},
            }
        )
    container = {
        "name": "server",
        "image": config.server_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": server_command(body, config),
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            *_env_list(config, **env),
        ],
        "ports": [
            {
                "name": k8s.MODEL_SERVER_PORT_NAME,
                "containerPort": k8s.MODEL_SERVER_PORT,
                "protocol": "TCP",
            }
        ],
        # Polled every second so a cold start is noticed as soon as the model is warm.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": probe_port},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": probe_port},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 6,
        },
        "resources": _resources(body["spec"], config),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": body["metadata"].get("namespace", config.namespace),
            "labels": dict(labels),
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "replicas": replicas,
            # Recreate: never a second pod of the same model next to the old one.
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "nodeSelector": dict(config.node_selector),
                    "terminationGracePeriodSeconds": 30,
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def convert_command(body: Body, config: OperatorConfig) -> list[str]:
    spec = body["spec"]
    src = source_of(spec)
    if not src.is_repo:
        source_host_path(config, src.location)  # refuses a path outside the root
    command = [
        "akidb-embed",
        "convert",
        src.location if src.is_repo else SOURCE_MOUNT,
        artifact_path(config, model_key(spec)),
        "--name",
        body["metadata"]["name"],
        "--precision",
        precision_of(spec),
    ]
    if src.is_repo:
        command += ["--revision", src.revision]
    if spec.get("family") in FAMILIES:
        command += ["--family", spec["family"]]
    if spec.get("maxLength"):
        command += ["--max-length", str(spec["maxLength"])]
    if spec.get("pooling"):
        command += ["--pooling", spec["pooling"]]
    if "normalize" in spec:
        command.append("--normalize" if spec["normalize"] else "--no-normalize")
    if spec.get("matryoshkaDimensions"):
        command += [
            "--matryoshka-dimensions",
            ",".join(str(d) for d in spec["matryoshkaDimensions"]),
        ]
    if uses_tensorrt(spec):
        command.append("--warm-tensorrt")
    return command


def conversion_job(body: Body, config: OperatorConfig) -> Body:
    """A Job on the node that converts the checkpoint into the store (idempotent)."""
    name = body["metadata"]["name"]
    key = model_key(body["spec"])
    generation = int(body["metadata"].get("generation", 1))
    labels = {
        k8s.LABEL_NAME: CONVERTER_APP,
        k8s.LABEL_PART_OF: k8s.PART_OF,
        k8s.LABEL_MODEL: name,
        LABEL_ARTIFACT_KEY: key,
    }
    env = {**SCRATCH_ENV, "HF_HOME": config.hf_cache}
    if config.hf_offline:
        env["HF_HUB_OFFLINE"] = "1"
    mounts: list[dict[str, Any]] = [
        {"name": MODEL_VOLUME, "mountPath": config.model_store},
        {"name": HF_CACHE_VOLUME, "mountPath": config.hf_cache},
        _scratch_mount(),
    ]
    src = source_of(body["spec"])
    volumes = [
        _store_volume(config),
        {
            "name": HF_CACHE_VOLUME,
            "hostPath": {"path": config.hf_cache, "type": "DirectoryOrCreate"},
        },
        _scratch_volume("8Gi"),
    ]
    if not src.is_repo:
        # A checkpoint below the source root: read-only at a fixed path, never elsewhere.
        host = source_host_path(config, src.location)
        mounts.append({"name": SOURCE_VOLUME, "mountPath": SOURCE_MOUNT, "readOnly": True})
        volumes.append({"name": SOURCE_VOLUME, "hostPath": {"path": host, "type": "Directory"}})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": conversion_job_name(name, key, generation),
            "namespace": body["metadata"].get("namespace", config.namespace),
            "labels": dict(labels),
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            # A failed conversion is reported, not retried in a loop: edit the spec to retry.
            "backoffLimit": 0,
            "activeDeadlineSeconds": config.convert_timeout,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": dict(config.node_selector),
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [
                        {
                            "name": "convert",
                            "image": config.converter_image,
                            "imagePullPolicy": config.image_pull_policy,
                            "command": convert_command(body, config),
                            "env": _env_list(config, **env),
                            "resources": {"requests": {"memory": config.convert_memory}},
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": mounts,
                            "securityContext": container_security_context(),
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


# Events --------------------------------------------------------------------------------

EVENT_COMPONENT = "akidb-embed-operator"
EVENT_MESSAGE_LIMIT = 1024


def model_event(body: Body, type_: str, reason: str, message: str, now: str, instance: str) -> Body:
    """A core/v1 Event about an EmbeddingModel (what `kubectl describe` lists)."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", k8s.API_VERSION),
            "kind": body.get("kind", k8s.KIND),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:EVENT_MESSAGE_LIMIT],
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "reportingInstance": instance[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


# Status ----------------------------------------------------------------------------------


def condition(
    type_: str, status: bool, reason: str, message: str, now: str, generation: int | None
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(
    existing: list[dict[str, Any]] | None, *updates: dict[str, Any]
) -> list[dict[str, Any]]:
    """Replace conditions by type, keeping lastTransitionTime when the status is unchanged."""
    by_type = {c["type"]: dict(c) for c in existing or []}
    for new in updates:
        old = by_type.get(new["type"])
        merged = dict(new)
        if old is not None and old.get("status") == new["status"]:
            merged["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
        by_type[new["type"]] = merged
    return [by_type[t] for t in sorted(by_type)]


def condition_is_true(status: Body, type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or []
    )


def is_converted(body: Body) -> bool:
    """Converted for the current spec: the artifact key matches and the condition holds."""
    status = body.get("status") or {}
    try:
        key = model_key(body.get("spec") or {})
    except ValueError:
        return False
    artifact = status.get("artifact") or {}
    return artifact.get("key") == key and condition_is_true(status, CONVERTED)


def phase_of(body: Body) -> str:
    return str((body.get("status") or {}).get("phase") or PENDING)


def replicas_for(body: Body) -> int:
    return desired_replicas(phase_of(body))


_LOG_NOISE = re.compile(r"\x1b\[[0-9;]*m")


def failure_reason(text: str, limit: int = 1500) -> str:
    """The useful tail of a conversion log or termination message for status.message."""
    lines = [_LOG_NOISE.sub("", line).rstrip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "error" in line.lower()]
    tail = "\n".join(errors[-3:] if errors else lines[-5:])
    return tail[-limit:]


TEMPLATE_HASH = f"{k8s.GROUP}/template-hash"


def with_template_hash(deployment: Body) -> Body:
    """The Deployment annotated with a hash of its spec minus replicas, so the operator
    can tell from its cache that one is up to date without writing it again."""
    import hashlib
    import json

    spec = {k: v for k, v in deployment["spec"].items() if k != "replicas"}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    meta = deployment["metadata"]
    meta["annotations"] = {**(meta.get("annotations") or {}), TEMPLATE_HASH: digest}
    return deployment
