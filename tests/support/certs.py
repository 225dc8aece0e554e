"""Certificates from a trustme CA as the PEM files a gateway config names."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


def write_pair(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    """The leaf's chain and key as PEM files ``<name>.crt`` / ``<name>.key``."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def der(leaf: trustme.LeafCert) -> bytes:
    """The leaf certificate in DER, as ``getpeercert(binary_form=True)`` returns it."""
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
