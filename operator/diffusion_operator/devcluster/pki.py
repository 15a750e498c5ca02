"""Certificates and keys for one local cluster, written as PEM files into its state directory.

One self-signed CA signs the apiserver's serving certificate (valid for 127.0.0.1, localhost
and the in-cluster ``kubernetes`` names) and an admin client certificate in ``system:masters``.
One RSA key signs and verifies service-account tokens. Nothing here is fit for production;
it exists so the local cluster runs with real TLS, real authentication and RBAC on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ClusterPKI:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool,
          usages: list | None = None, sans: list | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(directory: Path, service_ip: str = "10.96.0.1") -> ClusterPKI:
    """Create the cluster's PKI once; reuse it when the files already exist."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = ClusterPKI(*(directory / n for n in (
        "ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "admin.crt", "admin.key", "sa.key", "sa.pub")))
    if all(Path(p).exists() for p in pki.__dict__.values()):
        return pki
    ca_key = _key()
    ca_name = _name("diffusion-operator-local-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca)

    srv_key = _key()
    dns_names = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local")
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
    srv = _cert(_name("kube-apiserver"), srv_key, ca_name, ca_key, ca=False,
                usages=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans)
    _write_key(pki.serving_key, srv_key)
    _write_cert(pki.serving_cert, srv)

    admin_key = _key()
    admin = _cert(_name("diffusion-operator-admin", "system:masters"), admin_key, ca_name, ca_key, ca=False,
                  usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write_key(pki.admin_key, admin_key)
    _write_cert(pki.admin_cert, admin)

    sa_key = _key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def ensure_client_cert(directory: Path, name: str, common_name: str, org: str | None = None) -> tuple[Path, Path]:
    """A client certificate signed by the cluster CA (the kubelet's ``system:node:<name>`` in
    ``system:nodes``, kube-proxy's ``system:kube-proxy``). Reused when it already exists."""
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    ca = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    key = _key()
    cert = _cert(_name(common_name, org), key, ca.subject, ca_key, ca=False,
                 usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path
