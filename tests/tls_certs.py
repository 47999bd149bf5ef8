"""Test certificates, generated at test time with the ``openssl`` CLI (never committed).

:func:`make_pki` writes a throw-away CA and a server certificate for
``localhost`` + ``127.0.0.1`` signed by it (ECDSA P-256, valid one day);
:func:`issue` signs another server certificate (e.g. to test reloading).
Files are world-readable except the keys (0600), and owned by the ``postgres``
user when the suite runs as root, so a PostgreSQL cluster can use them too.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.pgcluster import RUN_AS


@dataclass
class Pki:
    dir: Path
    ca: Path          # CA certificate (what clients trust: sslrootcert, NODE_EXTRA_CA_CERTS)
    ca_key: Path
    cert: Path        # server certificate for localhost / 127.0.0.1
    key: Path

    def client_context(self, check_hostname: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = check_hostname
        return ctx


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl CLI is required (Debian package openssl)"
    subprocess.run([openssl, *args], check=True, capture_output=True)


def _own(path: Path, mode: int) -> None:
    os.chmod(path, mode)
    if os.geteuid() == 0:
        shutil.chown(path, user=RUN_AS)


def issue(pki: Pki, name: str, *, cn: str = "localhost", sans: str = "DNS:localhost,IP:127.0.0.1") -> tuple[Path, Path]:
    """A new server certificate + key signed by ``pki``'s CA: (cert, key)."""
    d = pki.dir
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    ext.write_text(f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki.ca), "-CAkey", str(pki.ca_key),
             "-CAcreateserial", "-out", str(crt), "-days", "1", "-sha256", "-extfile", str(ext))
    _own(key, 0o600)
    _own(crt, 0o644)
    return crt, key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-sha256", "-subj", "/CN=wirepool test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _own(ca, 0o644)
    pki = Pki(directory, ca, ca_key, directory / "server.crt", directory / "server.key")
    pki.cert, pki.key = issue(pki, "server")
    return pki
