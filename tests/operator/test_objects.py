"""Object builders, state conversion, units and settings: plain data in, plain data out."""

from __future__ import annotations

import argparse
from decimal import Decimal

import pytest

from akidb_embed import k8s
from akidb_embed.artifact import artifact_key
from akidb_embed.operator import objects
from akidb_embed.operator.config import OperatorConfig, add_arguments, from_args, parse_selector
from akidb_embed.operator.placement import ACTIVATING, EVICTING, READY, STANDBY
from akidb_embed.operator.state import WriteOverlay, model_view, pod_view
from akidb_embed.units import (
    format_bytes,
    memory_bytes,
    parse_duration,
    parse_quantity,
)

CONFIG = OperatorConfig(
    model_store="/store", hf_cache="/hf", source_root="/srv/sources", pod_env={"EXTRA": "1"}
)
SECURE_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def body(**spec: object) -> dict:
    base: dict = {
        "source": {"repo": "intfloat/e5-small-v2", "revision": "v2"},
        "dimension": 384,
        "maxLength": 512,
        "pooling": "mean",
        "normalize": True,
        "family": "e5",
        "precision": "fp16",
        "executionProviders": ["CUDA", "CPU"],
        "resources": {"memory": "768Mi", "cpu": "2"},
        "maxBatchSize": 16,
        "maxBatchTokens": 4096,
    }
    base.update(spec)
    return {
        "apiVersion": "akidb.io/v1alpha1",
        "kind": "EmbeddingModel",
        "metadata": {"name": "e5-small-v2", "namespace": "akidb", "uid": "u-1", "generation": 3},
        "spec": base,
        "status": {},
    }


def test_artifact_key_follows_source_revision_precision() -> None:
    b = body()
    assert objects.model_key(b["spec"]) == artifact_key("intfloat/e5-small-v2", "v2", "fp16")
    path = body(source={"path": "/ckpt/m"}, precision="int8")
    assert objects.model_key(path["spec"]) == artifact_key("/ckpt/m", "main", "int8")
    with pytest.raises(ValueError):
        objects.model_key({"source": {}})


def test_deployment_runs_the_server_on_the_node_with_labels_probes_and_owner() -> None:
    b = body()
    key = objects.model_key(b["spec"])
    dep = objects.model_deployment(b, CONFIG, replicas=0)
    assert dep["metadata"]["name"] == "model-e5-small-v2"
    assert dep["spec"]["replicas"] == 0
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    labels = {
        "app.kubernetes.io/name": "akidb-model-server",
        "app.kubernetes.io/part-of": "akidb-embed",
        "akidb.io/model": "e5-small-v2",
    }
    assert dep["spec"]["selector"]["matchLabels"] == labels
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == labels
    assert pod["spec"]["nodeSelector"] == {"akidb.io/accelerator": "jetson-thor"}
    (c,) = pod["spec"]["containers"]
    assert c["command"] == [
        "akidb-embed",
        "serve",
        f"/store/{key}",
        "--host",
        "$(POD_IP)",
        "--port",
        "8080",
        "--name",
        "e5-small-v2",
        "--providers",
        "CUDA,CPU",
        "--max-batch-size",
        "16",
        "--max-batch-tokens",
        "4096",
    ]
    assert c["env"][0] == {
        "name": "POD_IP",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }
    assert {"name": "EXTRA", "value": "1"} in c["env"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["readinessProbe"]["periodSeconds"] == 1
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # One model slot and the memory in MiB, as extended resources (limits = requests).
    slots = {"akidb.io/model-slot": "1", "akidb.io/model-memory": "768"}
    assert c["resources"] == {
        "requests": {"memory": "768Mi", "cpu": "2", **slots},
        "limits": {"memory": "768Mi", **slots},
    }
    # Read-only store and root file system: /tmp (an emptyDir) is the only scratch.
    assert c["volumeMounts"] == [
        {"name": "models", "mountPath": "/store", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    assert pod["spec"]["volumes"] == [
        {"name": "models", "hostPath": {"path": "/store", "type": "DirectoryOrCreate"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    assert "AKIDB_TRT_CACHE_DIR" not in env  # no TensorRT in this spec: no engine cache
    assert c["securityContext"] == SECURE_CONTAINER
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert c["image"] == CONFIG.server_image
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert dep["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "akidb.io/v1alpha1",
            "kind": "EmbeddingModel",
            "name": "e5-small-v2",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_conversion_job_for_a_repo() -> None:
    b = body()
    key = objects.model_key(b["spec"])
    job = objects.conversion_job(b, OperatorConfig(model_store="/store", hf_offline=True))
    assert job["metadata"]["name"] == f"convert-e5-small-v2-{key[:8]}-g3"
    assert job["metadata"]["labels"]["akidb.io/artifact-key"] == key
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"akidb.io/accelerator": "jetson-thor"}
    (c,) = pod["containers"]
    assert c["command"] == [
        "akidb-embed",
        "convert",
        "intfloat/e5-small-v2",
        f"/store/{key}",
        "--name",
        "e5-small-v2",
        "--precision",
        "fp16",
        "--revision",
        "v2",
        "--family",
        "e5",
        "--max-length",
        "512",
        "--pooling",
        "mean",
        "--normalize",
    ]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {
        "HF_HOME": "/var/lib/akidb/hf-cache",
        "HF_HUB_OFFLINE": "1",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "XDG_CACHE_HOME": "/tmp/.cache",
    }
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"models": "/store", "hf-cache": "/var/lib/akidb/hf-cache", "tmp": "/tmp"}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # The converter image (torch, transformers, onnx), not the model-server image.
    assert c["image"] == OperatorConfig().converter_image != OperatorConfig().server_image
    assert c["securityContext"] == SECURE_CONTAINER
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


def test_conversion_job_for_a_path_mounts_it_and_warms_tensorrt() -> None:
    b = body(
        source={"path": "/srv/sources/team/ckpt"},
        executionProviders=["TensorRT", "CPU"],
        matryoshkaDimensions=[128, 384],
        normalize=False,
    )
    job = objects.conversion_job(b, CONFIG)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert "--revision" not in c["command"]
    # Mounted read-only at a fixed path, whatever its node path.
    assert c["command"][2] == objects.SOURCE_MOUNT
    assert c["command"][-4:] == [
        "--no-normalize",
        "--matryoshka-dimensions",
        "128,384",
        "--warm-tensorrt",
    ]
    assert {"name": "source", "mountPath": objects.SOURCE_MOUNT, "readOnly": True} in c[
        "volumeMounts"
    ]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["source"]["hostPath"] == {"path": "/srv/sources/team/ckpt", "type": "Directory"}


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc",
        "/var/lib/kubelet",
        "/srv/sources",  # the root itself: every other checkpoint with it
        "/srv/sources/../../etc",
        "/srv/sources/a/../../x",
        "/srv/sourcesX/ckpt",  # a sibling with the root as prefix
        "/srv/sources/..",
        "srv/sources/ckpt",
    ],
)
def test_source_paths_outside_the_root_are_refused_and_never_mounted(path: str) -> None:
    b = body(source={"path": path})
    with pytest.raises(objects.SourceRefused, match="source root /srv/sources"):
        objects.conversion_job(b, CONFIG)
    with pytest.raises(objects.SourceRefused):
        objects.convert_command(b, CONFIG)


def test_source_paths_inside_the_root_are_normalised() -> None:
    assert objects.source_host_path(CONFIG, "/srv/sources/./a//b/") == "/srv/sources/a/b"


def test_tensorrt_models_get_a_writable_engine_cache_per_artifact() -> None:
    from akidb_embed.model_server import engine

    b = body(executionProviders=["TensorRT", "CPU"])
    key = objects.model_key(b["spec"])
    config = OperatorConfig(model_store="/store", trt_cache="/node/trt")
    pod = objects.model_deployment(b, config, replicas=1)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # The name the model server reads, and a folder of its own under the writable mount.
    assert objects.TRT_CACHE_ENV == engine.TRT_CACHE_ENV
    assert env[engine.TRT_CACHE_ENV] == f"{objects.TRT_CACHE_MOUNT}/{key}"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["trt-cache"] == {"name": "trt-cache", "mountPath": objects.TRT_CACHE_MOUNT}
    assert mounts["models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["trt-cache"]["hostPath"]["path"] == "/node/trt"


def test_long_names_fit_kubernetes_limits() -> None:
    long = "m" * 70
    assert len(objects.deployment_name(long)) <= 63
    name = objects.conversion_job_name(long, "abcdef0123456789", 12345)
    assert len(name) <= 63 and name.endswith("-abcdef01-g12345")


def test_merge_conditions_keeps_transition_time_when_status_is_unchanged() -> None:
    old = [objects.condition("Ready", False, "Activating", "", "t1", 1)]
    same = objects.merge_conditions(old, objects.condition("Ready", False, "X", "m", "t2", 2))
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["reason"] == "X"
    flipped = objects.merge_conditions(old, objects.condition("Ready", True, "Y", "", "t3", 2))
    assert flipped[0]["lastTransitionTime"] == "t3"
    both = objects.merge_conditions(old, objects.condition("Converted", True, "C", "", "t4", 2))
    assert [c["type"] for c in both] == ["Converted", "Ready"]


def test_is_converted_needs_condition_and_current_key() -> None:
    b = body()
    key = objects.model_key(b["spec"])
    b["status"] = {
        "artifact": {"key": key},
        "conditions": [objects.condition("Converted", True, "Converted", "", "t", 3)],
    }
    assert objects.is_converted(b)
    b["spec"]["precision"] = "int8"  # a new artifact is needed
    assert not objects.is_converted(b)


def test_failure_reason_prefers_error_lines() -> None:
    log = "loading\n\x1b[31mdownloading\x1b[0m\nakidb-embed convert: error: no such repo\n"
    assert objects.failure_reason(log) == "akidb-embed convert: error: no such repo"
    assert objects.failure_reason("a\nb\nc") == "a\nb\nc"


def test_model_view_from_body() -> None:
    b = body(pinned=True, idleTimeout="10m")
    b["status"] = {
        "phase": READY,
        "lastRequestTime": "2025-01-01T00:00:10Z",
        "requestedAt": "2025-01-01T00:00:05.5Z",
        "activeSince": "2025-01-01T00:00:06Z",
    }
    view = model_view(b)
    assert view.phase == READY and view.pinned and not view.converted
    assert view.memory == 768 * 2**20
    assert view.idle_timeout == 600
    assert view.last_request == 1735689610.0
    assert view.requested_at == 1735689605.5
    assert model_view(body()).phase == "Pending"


def test_pod_view_counts_terminating_and_finished_pods() -> None:
    pod = {
        "metadata": {"name": "p", "labels": {k8s.LABEL_MODEL: "e5"}},
        "spec": {"containers": [{"resources": {"limits": {"memory": "1Gi"}}}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    view = pod_view(pod)
    assert (view.model, view.ready, view.terminating, view.memory) == ("e5", True, False, 2**30)
    pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert pod_view(pod).terminating
    del pod["metadata"]["deletionTimestamp"]
    pod["status"]["phase"] = "Failed"  # node-pressure eviction: holds no slot, to delete
    failed = pod_view(pod)
    assert failed.finished and not failed.ready and not failed.terminating


def test_write_overlay_bridges_until_the_watch_catches_up() -> None:
    overlay = WriteOverlay()
    b = body()
    b["status"] = {"phase": STANDBY, "requestedAt": "2025-01-01T00:00:00Z"}
    overlay.record("e5-small-v2", "u-1", {"phase": ACTIVATING, "activeSince": "t"})
    seen = overlay.apply(b)
    assert seen["status"]["phase"] == ACTIVATING
    assert seen["status"]["requestedAt"] == "2025-01-01T00:00:00Z"  # the gateway's field stays
    b["status"] = {"phase": ACTIVATING, "activeSince": "t"}
    assert overlay.apply(b) is b and not overlay.written  # caught up: forgotten
    overlay.record("e5-small-v2", "u-1", {"phase": EVICTING})
    other = body()
    other["metadata"]["uid"] = "u-2"  # deleted and recreated: our write is not about it
    assert overlay.apply(other) is other


def test_write_overlay_entries_expire() -> None:
    now = [100.0]
    overlay = WriteOverlay(ttl=15.0, clock=lambda: now[0])
    b = body()
    b["status"] = {"phase": STANDBY}
    overlay.record("e5-small-v2", "u-1", {"phase": ACTIVATING})
    now[0] += 14
    assert overlay.apply(b)["status"]["phase"] == ACTIVATING
    now[0] += 2  # the watch never showed it (paused stream): trust the watch again
    assert overlay.apply(b) is b and not overlay.written


@pytest.mark.parametrize(
    ("text", "value"),
    [("512Mi", 512 * 2**20), ("1.5Gi", 3 * 2**29), ("1G", 10**9), ("100m", 1), ("3", 3)],
)
def test_memory_bytes(text: str, value: int) -> None:
    assert memory_bytes(text) == value


def test_quantities_and_durations() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    with pytest.raises(ValueError):
        parse_quantity("12 apples")
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert parse_duration("45") == 45
    for bad in ("", "10x", "m10", "10m5"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_bytes(3 * 2**30) == "3Gi" and format_bytes(1000) == "1000"


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKIDB_CAPACITY", "5")
    monkeypatch.setenv("AKIDB_MIN_RESIDENCY", "2m")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(
        parser.parse_args(["--memory-budget", "8Gi", "--node-selector", "a=b,c=d", "--hf-offline"])
    )
    assert cfg.capacity == 5 and cfg.min_residency == 120
    assert cfg.memory_budget == 8 * 2**30 and cfg.hf_offline
    assert cfg.node_selector == {"a": "b", "c": "d"}
    assert cfg.limits.capacity == 5
    assert from_args(parser.parse_args(["--memory-budget", "none"])).memory_budget is None
    assert cfg.source_root == "/var/lib/akidb/sources"
    monkeypatch.setenv("AKIDB_SOURCE_ROOT", "/data/sources/")
    monkeypatch.setenv("AKIDB_CONVERTER_IMAGE", "localhost/conv:1")
    monkeypatch.setenv("AKIDB_IMAGE_PULL_POLICY", "Never")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(parser.parse_args([]))
    assert cfg.source_root == "/data/sources"
    assert cfg.converter_image == "localhost/conv:1" and cfg.image_pull_policy == "Never"
    with pytest.raises(ValueError, match="source-root"):
        from_args(parser.parse_args(["--source-root", "/"]))
    with pytest.raises(ValueError):
        parse_selector("novalue")


def test_node_advertises_slots_and_memory_and_pods_request_them() -> None:
    from akidb_embed.operator.capacity import node_resources, node_status_patch, pod_resources

    wanted = node_resources(3, 8 * 2**30)
    assert wanted == {"akidb.io/model-slot": "3", "akidb.io/model-memory": "8192"}
    assert node_resources(2, None) == {"akidb.io/model-slot": "2"}  # memory unlimited
    assert pod_resources("1.5Gi", 8 * 2**30)["akidb.io/model-memory"] == "1536"
    assert pod_resources("1000000", 8 * 2**30)["akidb.io/model-memory"] == "1"  # rounded up
    assert pod_resources("1Gi", None) == {"akidb.io/model-slot": "1"}
    node = {"status": {"capacity": {"cpu": "2"}, "allocatable": {"cpu": "2"}}}
    patch = node_status_patch(node, wanted)
    assert patch == {"status": {"capacity": wanted, "allocatable": wanted}}
    advertised = {"status": {"capacity": {"cpu": "2", **wanted}, "allocatable": dict(wanted)}}
    assert node_status_patch(advertised, wanted) is None
    # A changed capacity is re-advertised.
    assert node_status_patch(advertised, node_resources(4, 8 * 2**30)) is not None
