"""Throw-away TLS certificates for local servers (a CA and a server certificate for
127.0.0.1), made with the ``openssl`` command line tool."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from shardcache.testing._process import find_binary

__all__ = ["TlsFiles", "make_certificates"]


@dataclass(frozen=True)
class TlsFiles:
    """Where the certificates are: give ``ca`` to clients as ``ssl_ca_certs``."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 / localhost, valid for two days."""
    openssl = find_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key = directory / "ca.key"
    request = directory / "server.csr"
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    new_key = ("-newkey", "rsa:2048", "-nodes")
    run("req", "-x509", *new_key, "-days", "2", "-subj", "/CN=shardcache test CA",
        "-keyout", str(ca_key), "-out", str(files.ca))  # fmt: skip
    run("req", *new_key, "-subj", "/CN=127.0.0.1", "-keyout", str(files.key),
        "-out", str(request))  # fmt: skip
    run("x509", "-req", "-in", str(request), "-CA", str(files.ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions),
        "-out", str(files.cert))  # fmt: skip
    return files
