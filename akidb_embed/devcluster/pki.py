"""Certificates and keys for the local control plane (python `cryptography`).

One self-signed CA signs the API server's and the kubelet's serving certificates and
every client certificate (admin, controllers, the node's kubelet, kube-proxy and
kube-router, the API server as the kubelet's client). The service-account key pair signs
and verifies ServiceAccount tokens. Existing files are kept, so a restart keeps trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)

# Client identities: file stem -> (common name = user, organizations = groups).
CLIENTS: dict[str, tuple[str, list[str]]] = {
    "admin": ("kubernetes-admin", ["system:masters"]),
    "controller-manager": ("system:kube-controller-manager", []),
    "scheduler": ("system:kube-scheduler", []),
    # The API server calling the kubelet's API (`kubectl logs/exec`).
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", []),
    # Bound to system:node-proxier by Kubernetes' bootstrap policy.
    "kube-proxy": ("system:kube-proxy", []),
    # Bound to a ClusterRole by the cluster's bootstrap RBAC (cluster.BOOTSTRAP_RBAC).
    "kube-router": ("akidb:kube-router", []),
}

SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def kubelet_cert(self) -> Path:
        return self.dir / "kubelet.crt"

    @property
    def kubelet_key(self) -> Path:
        return self.dir / "kubelet.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, who: str) -> Path:
        return self.dir / f"{who}.crt"

    def client_key(self, who: str) -> Path:
        return self.dir / f"{who}.key"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _name(cn: str, orgs: list[str] | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs or []]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _has_ips(cert_path: Path, ips: list[str]) -> bool:
    """Does the certificate name every one of `ips` (a new address means a new cert)?"""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not ips
    have = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(ips) <= have


def ensure_pki(
    pki_dir: Path,
    serving_ips: list[str],
    node_ips: list[str] | None = None,
    node_name: str = "jetson-thor-0",
) -> Pki:
    """Create whatever of the CA, serving/client certificates and SA keys is missing.

    The node's own credential is `node.crt` (system:node:<node_name> in system:nodes),
    which the Node authorizer and NodeRestriction admission recognise.
    """
    pki = Pki(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)

    if not (pki.ca_cert.exists() and pki.ca_key.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = _name("akidb-devcluster-ca")
        cert = (
            _builder(name, name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(pki.ca_key, ca_key)
        pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        # A new CA invalidates every certificate it did not sign.
        for stale in pki_dir.glob("*.crt"):
            if stale != pki.ca_cert:
                stale.unlink()

    ca_key = _load_key(pki.ca_key)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())

    def issue(
        cert_path: Path,
        key_path: Path,
        subject: x509.Name,
        server: bool,
        ips: list[str] | None = None,
        dns: tuple[str, ...] = SERVING_DNS_NAMES,
    ) -> None:
        if cert_path.exists() and key_path.exists() and _has_ips(cert_path, ips or []):
            return
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(subject, ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or []]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    issue(pki.serving_cert, pki.serving_key, _name("kube-apiserver"), True, serving_ips)
    if node_ips:
        issue(pki.kubelet_cert, pki.kubelet_key, _name(node_name), True, node_ips, (node_name,))
    clients = {**CLIENTS, "node": (f"system:node:{node_name}", ["system:nodes"])}
    for who, (cn, orgs) in clients.items():
        issue(pki.client_cert(who), pki.client_key(who), _name(cn, orgs), server=False)

    if not (pki.sa_key.exists() and pki.sa_pub.exists()):
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki.sa_key, sa_key)
        pki.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki
