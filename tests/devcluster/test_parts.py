"""The devcluster's parts that need no running cluster."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from akidb_embed.cli import build_parser
from akidb_embed.devcluster import agent_state, build, cluster, pki, podspec, procs, proxy


def test_expand_follows_kubelet_rules() -> None:
    env = {"POD_IP": "127.77.0.5", "PORT": "8080"}
    assert podspec.expand("--host=$(POD_IP):$(PORT)", env) == "--host=127.77.0.5:8080"
    assert podspec.expand("$(MISSING)", env) == "$(MISSING)"
    assert podspec.expand("$$(POD_IP)", env) == "$(POD_IP)"
    assert podspec.expand("cost $5 $(", env) == "cost $5 $("
    assert podspec.expand("$", env) == "$"


def test_field_refs_and_named_ports() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a.b/c": "x"}},
        "spec": {
            "nodeName": "n",
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
    }
    assert podspec.field_ref(pod, "metadata.name", "1.2.3.4", "h") == "p"
    assert podspec.field_ref(pod, "status.podIP", "1.2.3.4", "h") == "1.2.3.4"
    assert podspec.field_ref(pod, "spec.serviceAccountName", "", "") == "default"
    assert podspec.field_ref(pod, "metadata.labels['a.b/c']", "", "") == "x"
    with pytest.raises(KeyError):
        podspec.field_ref(pod, "spec.bogus", "", "")
    assert podspec.resolve_port(pod, None, "http") == 8080
    assert podspec.resolve_port(pod, None, 9000) == 9000
    with pytest.raises(KeyError):
        podspec.resolve_port(pod, None, "grpc")


def test_restart_policy_backoff_and_selectors() -> None:
    assert podspec.should_restart("Always", 0)
    assert podspec.should_restart("OnFailure", 1) and not podspec.should_restart("OnFailure", 0)
    assert not podspec.should_restart("Never", 1)
    delays = [podspec.backoff_delay(n, 10, 300) for n in range(8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert podspec.selector_matches({"app": "web"}, {"app": "web", "x": "y"})
    assert not podspec.selector_matches({"app": "web"}, {"app": "db"})
    assert not podspec.selector_matches({}, {"app": "web"})


def test_staging_modules_are_read_from_go_mod() -> None:
    go_mod = """
replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
require github.com/foo/bar v1.0.0
"""
    assert build.staging_modules(go_mod) == ["k8s.io/api", "k8s.io/client-go"]
    assert build.staging_version("v1.36.3") == "v0.36.3"


def test_cache_and_state_dirs_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert build.cache_dir("v1.2.3") == tmp_path / "c" / "akidb-embed" / "kube" / "v1.2.3"
    monkeypatch.delenv(cluster.STATE_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "s"))
    assert cluster.default_state_dir() == tmp_path / "s" / "akidb-embed" / "devcluster"
    monkeypatch.setenv(cluster.STATE_ENV, str(tmp_path / "explicit"))
    assert cluster.default_state_dir() == tmp_path / "explicit"


def test_missing_go_is_reported_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(build, "_GO_FALLBACKS", ())
    with pytest.raises(build.BuildError, match="Go is not installed"):
        build.find_go()


def test_pki_issues_a_chain_the_api_server_can_use(tmp_path: Path) -> None:
    made = pki.ensure_pki(tmp_path / "pki", ["127.0.0.1"])
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    serving = x509.load_pem_x509_certificate(made.serving_cert.read_bytes())
    serving.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    admin = x509.load_pem_x509_certificate(made.client_cert("admin").read_bytes())
    admin.verify_directly_issued_by(ca)
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:masters"
    )
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    # A second call keeps what exists (clients keep trusting the cluster).
    before = made.ca_cert.read_bytes()
    pki.ensure_pki(tmp_path / "pki", ["127.0.0.1"])
    assert made.ca_cert.read_bytes() == before


def test_pid_records_check_identity_and_stop_groups(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess,sys,time; "
            "subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)",
        ],
        start_new_session=True,
    )
    record = procs.PidRecord.of(child.pid, "python")
    path = agent_state.proc_record_path(tmp_path, "uid-1", "main")
    record.save(path)
    assert procs.PidRecord.load(path) == record and record.alive()
    # Same pid, different start time: someone else's process, never signalled.
    impostor = procs.PidRecord(child.pid, record.start_time + 1, "python")
    assert not impostor.alive() and not procs.stop(impostor)
    assert child.poll() is None
    time.sleep(0.3)  # let the grandchild start
    group = subprocess.run(
        ["pgrep", "-g", str(child.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(group) == 2
    done = agent_state.stop_recorded_pod_processes(tmp_path, grace_s=2)
    assert len(done) == 1 and not path.exists()
    assert child.wait(timeout=5) is not None
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-g", str(child.pid)], capture_output=True).stdout:
        assert time.monotonic() < deadline, "a member of the process group survived"
        time.sleep(0.1)


def test_status_of_an_absent_cluster(tmp_path: Path) -> None:
    status = cluster.DevCluster(tmp_path / "none").status()
    assert not status.running and not status.ready and status.server is None
    assert "stopped" in status.describe()


def test_cli_offers_cluster_commands(tmp_path: Path) -> None:
    parser = build_parser()
    for action in ("build", "up", "down", "status", "kubeconfig"):
        args = parser.parse_args(["cluster", action])
        assert callable(args.handler)
    args = parser.parse_args(["cluster", "up", "--state-dir", str(tmp_path)])
    assert args.state_dir == tmp_path
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "akidb_embed",
            "cluster",
            "kubeconfig",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "no cluster" in out.stderr


def test_config_roundtrip_and_node_ip(tmp_path: Path) -> None:
    cfg = cluster.ClusterConfig(pod_subnet="127.77.0.0/16", apiserver_port=6443)
    cfg.save(tmp_path / "c.json")
    again = cluster.ClusterConfig.load(tmp_path / "c.json")
    assert again == cfg and again.node_ip == "127.77.0.1"
    assert again.server == "https://127.0.0.1:6443"
    assert json.loads((tmp_path / "c.json").read_text())["pod_subnet"] == "127.77.0.0/16"


async def test_forwarder_skips_a_dead_backend_and_relays_both_ways() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.readline())
        await writer.drain()
        writer.close()

    live = await asyncio.start_server(echo, "127.0.0.1", 0)
    live_port = live.sockets[0].getsockname()[1]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    backends = [("127.0.0.1", dead_port), ("127.0.0.1", live_port)]
    fwd = proxy.Forwarder()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        listen_port = s.getsockname()[1]
    key = ("127.0.0.1", listen_port)
    await fwd.reconcile({key: ("test", lambda: list(backends))})
    assert fwd.listening == [key]
    for _ in range(4):  # backends are shuffled: the dead one is hit first some of the time
        reader, writer = await asyncio.open_connection(*key)
        writer.write(b"hi\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b"echo:hi\n"
        writer.close()
    await fwd.reconcile({})
    assert fwd.listening == []
    with pytest.raises(OSError):
        await asyncio.open_connection(*key)
    await fwd.close()
    live.close()
