"""Kubernetes names shared by the operator, the gateway and the manifests."""

from __future__ import annotations

import datetime as dt
import os

GROUP = "akidb.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "EmbeddingModel"
PLURAL = "embeddingmodels"
SHORT_NAME = "em"
DEFAULT_NAMESPACE = "akidb"

# Labels on model-server pods (and their Deployments).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MODEL = f"{GROUP}/model"
MODEL_SERVER_APP = "akidb-model-server"
PART_OF = "akidb-embed"
MODEL_SERVER_SELECTOR = f"{LABEL_NAME}={MODEL_SERVER_APP}"

# The node the model pods run on.
NODE_LABEL_ACCELERATOR = f"{GROUP}/accelerator"
NODE_ACCELERATOR_VALUE = "jetson-thor"

MODEL_SERVER_PORT = 8080
MODEL_SERVER_PORT_NAME = "http"
DEFAULT_MODEL_STORE = "/var/lib/akidb/models"


def to_rfc3339(epoch: float) -> str:
    """Epoch seconds -> RFC 3339 UTC with microseconds, as status timestamps are written."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    """RFC 3339 timestamp -> epoch seconds (None for missing or unparsable)."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def in_cluster_server() -> str | None:
    """The API server as a pod reaches it without DNS: the `kubernetes` Service's address
    the kubelet puts in every pod's environment (what client libraries' in-cluster
    config uses). None outside a pod."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
