"""The lab's own certificate authority, made afresh for every run.

Exchange publishes OWA, ActiveSync, Outlook Anywhere and autodiscover over HTTPS, and a
client refuses a server whose certificate it cannot trust or whose names do not match the
name it asked for. The lab therefore makes a CA per run (the ``cryptography`` package),
and one server certificate signed by it whose subject alternative names are every name a
client may use: the published name (``mail.lab.test``), ``autodiscover.lab.test``, each
array FQDN and each CAS's own FQDN. The CAS servers and a TLS-terminating load balancer
present it; clients trust only the lab CA and verify host names. Private keys are created
0600 (never readable for an instant) in a private folder outside the results (the run's
socket folder, removed at its end); certificates go to the run's raw folder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 2


@dataclass(frozen=True)
class TlsFiles:
    """Where a run's TLS material lives (PEM files)."""

    ca: Path           # the lab CA's certificate: what clients and HAProxy trust
    cert: Path         # the server certificate
    key: Path          # its private key
    combined: Path     # certificate then key, as HAProxy's ``crt`` wants them


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "caslab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str = "caslab lab CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh CA (key, certificate), valid from five minutes ago for VALID_DAYS."""
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(common_name)
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    return ca_key, ca_cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, subject: str, usage: x509.ObjectIdentifier,
          names: list[str] = (), addresses: list[str] = ()) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and its certificate signed by the CA, for one use (``usage``: server or
    client authentication), with ``names`` / ``addresses`` as subject alternative names."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_valid(ca_cert, "before")).not_valid_after(_valid(ca_cert, "after"))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _valid(cert: x509.Certificate, end: str) -> dt.datetime:
    """A certificate's validity bound (``cryptography`` before 42 has no ``*_utc`` names)."""
    return getattr(cert, f"not_valid_{end}_utc", None) or getattr(cert, f"not_valid_{end}")


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    """A new file, mode 0600 from its creation (never through a link, never an old file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_lab_tls(folder: Path, names: list[str], addresses: list[str] = (),
                 key_folder: Path | None = None) -> TlsFiles:
    """A CA and one server certificate for ``names`` (DNS SANs, the first is the subject)
    and ``addresses`` (IP SANs): certificates in ``folder``, private keys in ``key_folder``
    (default ``folder``; a run passes a private folder outside its results)."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    folder.mkdir(parents=True, exist_ok=True)
    key_folder = folder if key_folder is None else key_folder
    key_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca()
    key, cert = issue(ca_key, ca_cert, names[0], ExtendedKeyUsageOID.SERVER_AUTH, names, addresses)
    files = TlsFiles(folder / "lab-ca.pem", folder / "server.pem", key_folder / "server.key",
                     key_folder / "haproxy.pem")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert_pem)
    _write_private(files.key, _pem_key(key))
    _write_private(files.combined, cert_pem + _pem_key(key))
    return files
