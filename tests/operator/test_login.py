"""The operator's in-cluster address: the kubernetes Service from the pod's environment
(no cluster DNS needed), bracketed for IPv6."""

from __future__ import annotations

import pytest

from akidb_embed import k8s


def test_in_cluster_server_comes_from_the_service_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert k8s.in_cluster_server() is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert k8s.in_cluster_server() == "https://10.96.0.1:443"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert k8s.in_cluster_server() == "https://[fd00::1]:6443"
