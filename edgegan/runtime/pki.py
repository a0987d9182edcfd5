"""Throw-away TLS for a run (``edgegan simulate --backend grpc``, tests): a CA, a server certificate
for 127.0.0.1 / localhost, and client certificates whose CN and SANs name the node ids they may
speak for (the cloud's guard binds a token's node id to them, ``guard.bind_certificate``)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Mapping, Sequence


def make_certs(folder: Path, clients: Sequence[str] | Mapping[str, Sequence[str]] = (),
               days: float = 1.0) -> dict[str, Path]:
    """Write ``ca.pem``, ``server.cert.pem`` / ``server.key.pem`` and, per client CN,
    ``CN.cert.pem`` / ``CN.key.pem`` (keys mode 0600); ``clients`` maps a CN to the node ids its
    certificate also names (SAN), or lists CNs alone. Returns ``{"ca", "CN.cert", "CN.key", …}``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    sans = dict(clients) if isinstance(clients, Mapping) else {cn: () for cn in clients}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> Path:
        path.touch(mode=0o600)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("edgegan run CA")).issuer_name(name("edgegan run CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, alt: list) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1]))
        if alt:
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        paths[f"{cn}.cert"] = folder / f"{cn}.cert.pem"
        paths[f"{cn}.cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{cn}.key"] = write_key(key, folder / f"{cn}.key.pem")

    leaf("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    for cn, ids in sans.items():
        leaf(cn, [x509.DNSName(k) for k in ids])
    return paths
