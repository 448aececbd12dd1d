"""The devcluster's parts that need no running cluster."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from akidb_embed.cli import build_parser
from akidb_embed.devcluster import build, cluster, node, pki, procs


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
    path = tmp_path / "run" / "main.pid"
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
    assert procs.stop(record, grace_s=2)
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


def test_config_roundtrip_and_node_addresses(tmp_path: Path) -> None:
    cfg = cluster.ClusterConfig(apiserver_port=6443)
    cfg.save(tmp_path / "c.json")
    again = cluster.ClusterConfig.load(tmp_path / "c.json")
    assert again == cfg and again.node_ip == "10.244.255.2"
    # The API server is on the host end of the node's veth, so pods can reach it.
    assert again.server == "https://10.244.255.1:6443"
    assert json.loads((tmp_path / "c.json").read_text())["pod_subnet"] == "10.244.0.0/24"


def test_node_credentials_and_serving_cert_follow_addresses(tmp_path: Path) -> None:
    made = pki.ensure_pki(tmp_path / "pki", ["127.0.0.1"], ["10.244.255.2"], node_name="n1")
    cert = x509.load_pem_x509_certificate(made.client_cert("node").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:nodes"
    )
    kubelet = x509.load_pem_x509_certificate(made.kubelet_cert.read_bytes())
    sans = kubelet.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.244.255.2"]
    before = made.serving_cert.read_bytes()
    pki.ensure_pki(tmp_path / "pki", ["127.0.0.1"], ["10.244.255.2"], node_name="n1")
    assert made.serving_cert.read_bytes() == before
    # A new address (state from before the real node) gets a new serving certificate.
    pki.ensure_pki(tmp_path / "pki", ["127.0.0.1", "10.244.255.1"], ["10.244.255.2"])
    serving = x509.load_pem_x509_certificate(made.serving_cert.read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.244.255.1",
    }


def _oci_blobs(archive: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    return json.loads(files["index.json"]), files


def test_local_images_are_valid_byte_stable_oci_archives(tmp_path: Path) -> None:
    first = node.build_toolbox_archive(tmp_path / "a" / "toolbox.oci.tar")
    second = node.build_toolbox_archive(tmp_path / "b" / "toolbox.oci.tar")
    # Same input, same bytes: re-importing an unchanged image changes nothing.
    assert first.read_bytes() == second.read_bytes()
    index, files = _oci_blobs(first)
    [desc] = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == node.TOOLBOX_IMAGE

    def blob(d: dict[str, Any]) -> bytes:
        data = files[f"blobs/sha256/{d['digest'].split(':')[1]}"]
        assert hashlib.sha256(data).hexdigest() == d["digest"].split(":")[1]
        assert len(data) == d["size"]
        return data

    manifest = json.loads(blob(desc))
    config = json.loads(blob(manifest["config"]))
    [layer_desc] = manifest["layers"]
    layer = gzip.decompress(blob(layer_desc))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        names = {m.name: m for m in tar}
    assert names["bin/sh"].issym() and names["bin/sh"].linkname == "busybox"
    assert names["bin/busybox"].mode == 0o755


def test_pause_image_is_a_static_program_that_exits_on_sigterm(tmp_path: Path) -> None:
    archive = node.build_pause_archive(tmp_path / "pause.oci.tar")
    binary = archive.with_suffix(".bin")
    # Static (no PT_INTERP program header): it runs in an image that holds nothing else.
    headers = subprocess.run(["readelf", "-lW", str(binary)], capture_output=True, text=True)
    assert headers.returncode == 0 and "INTERP" not in headers.stdout
    proc = subprocess.Popen([str(binary)])
    time.sleep(0.2)
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(timeout=5) == 0


def test_machine_lock_refuses_a_live_owner_and_takes_over_a_dead_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(node, "MACHINE_LOCK", tmp_path / "run" / "node.json")
    mine, other = tmp_path / "mine", tmp_path / "other"
    node.take_lock(other, lambda d: True)
    with pytest.raises(node.NodeError, match=f"used by the cluster in {other}"):
        node.take_lock(mine, lambda d: True)
    assert node.lock_owner() == other.resolve()
    node.take_lock(mine, lambda d: False)  # the other cluster died without `down`
    assert node.lock_owner() == mine.resolve()
    node.release_lock(other)  # not the owner: no effect
    assert node.lock_owner() == mine.resolve()
    node.release_lock(mine)
    assert node.lock_owner() is None


def test_node_configs_carry_what_this_machine_needs(tmp_path: Path) -> None:
    paths = node.NodePaths(tmp_path)
    node.write_configs(paths, "jetson-thor-0", tmp_path / "pki", tmp_path / "kc")
    kubelet = json.loads(paths.kubelet_config.read_text())
    assert kubelet["failCgroupV1"] is False and kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["cgroupRoot"] == "/akidb-embed" and kubelet["readOnlyPort"] == 0
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    containerd = paths.containerd_config.read_text()
    assert "restrict_oom_score_adj = true" in containerd
    assert f'address = "{paths.containerd_socket}"' in containerd
    assert str(tmp_path) in containerd.split("root = ")[1].splitlines()[0]
    cni = json.loads((paths.cni_conf_dir / "10-akidb.conflist").read_text())
    assert cni["plugins"][0]["ipMasq"] is False
    router = node.argv("kube-router", paths, "jetson-thor-0", tmp_path / "kc")
    assert "--run-firewall=true" in router and "--run-router=false" in router
    assert "--run-service-proxy=false" in router
    assert router[:2] == ["nsenter", f"--net=/run/netns/{node.NETNS}"]
