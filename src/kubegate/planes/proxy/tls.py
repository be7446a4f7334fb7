"""TLS for the built-in proxy: one server-side SSLContext per certificate, chosen by SNI.

``TlsContexts.default`` is the context a TLS listener is created with. It holds a self-signed
"kubegate default" certificate (generated once per process) and an SNI callback that switches the
handshake to the context of the certificate serving the requested name: exact host first, then a
``*.suffix`` wildcard covering exactly one label, case-insensitive, as the router matches hosts.
Clients that send no SNI, or a name no certificate serves, get the default certificate.

``update(table)`` swaps the name map in one assignment, so new handshakes see new certificates without
a restart and handshakes in progress are unaffected. Contexts are cached by their PEM text: a table
where only one Secret changed reloads only that one certificate. A certificate that does not load
(broken PEM, key not matching the certificate, encrypted key) is skipped and reported in ``errors``;
its hosts fall back to the default certificate while every other certificate keeps working.

Python's ssl loads certificate chains only from files, so the PEM text is written to a private
directory (0700, files 0600) and removed as soon as OpenSSL has read it.
"""

from __future__ import annotations

import datetime
import functools
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubegate.ir.model import RoutingTable

DEFAULT_COMMON_NAME = "kubegate default"

# Mozilla "intermediate" TLS 1.2 suites (forward secret AEAD only); TLS 1.3 suites are OpenSSL's defaults
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"


@dataclass(frozen=True, slots=True)
class CertificateError:
    """A certificate of the routing table that could not be loaded (its hosts get the default one)."""

    certificate: str
    message: str

    def __str__(self) -> str:
        return f"certificate {self.certificate}: {self.message}"


def server_context() -> ssl.SSLContext:
    """A server-side context with the proxy's protocol policy and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _no_password() -> bytes:
    # an encrypted key must fail to load, never make OpenSSL prompt on a terminal
    return b""


def load_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A server context serving this certificate chain and key; raises ValueError saying what is wrong."""
    context = server_context()
    directory = tempfile.mkdtemp(prefix="kubegate-tls-")  # mode 0700
    try:
        paths = []
        for name, text in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            paths.append(path)
        try:
            context.load_cert_chain(paths[0], paths[1], password=_no_password)
        except ssl.SSLError as exc:
            raise ValueError(_describe(exc, cert_pem, key_pem)) from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return context


def _describe(exc: ssl.SSLError, cert_pem: str, key_pem: str) -> str:
    """Say what is wrong in words: OpenSSL's own reasons ("PEM lib") do not tell the user much."""
    try:
        certificates = x509.load_pem_x509_certificates(cert_pem.encode("utf-8"))
    except ValueError:
        return "the certificate is not valid PEM (tls.crt)"
    try:
        key = serialization.load_pem_private_key(key_pem.encode("utf-8"), password=None)
    except TypeError:
        return "the private key is encrypted (a passphrase is not supported)"
    except (ValueError, UnsupportedAlgorithm):
        return "the private key is not valid PEM (tls.key)"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != certificates[
        0
    ].public_key().public_bytes(serialization.Encoding.DER, public):
        return "the private key does not belong to the certificate"
    return f"cannot be loaded ({exc.reason or exc})"


@functools.cache
def default_certificate() -> tuple[str, str]:
    """(cert PEM, key PEM) of the self-signed fallback certificate, made once per process."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return cert_pem, key_pem


_Loaded = ssl.SSLContext | CertificateError


class TlsContexts:
    """The SNI-selecting server context and the certificate contexts it switches to."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        cert_pem, key_pem = default_certificate()
        self.default = load_context(cert_pem, key_pem)
        self.default.sni_callback = self._select
        self.errors: tuple[CertificateError, ...] = ()
        # bugs caught in the SNI callback (kept for tests and /debug; the handshake got the default)
        self.callback_errors: list[Exception] = []
        # lower-cased host (or "*.suffix") -> context; replaced whole on update
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}
        self._cache: dict[tuple[str, str], _Loaded] = {}
        if table is not None:
            self.update(table)

    def update(self, table: RoutingTable) -> tuple[CertificateError, ...]:
        """Serve the table's certificates from now on; returns (and keeps) the ones that failed."""
        cache: dict[tuple[str, str], _Loaded] = {}
        errors: list[CertificateError] = []
        by_name: dict[str, ssl.SSLContext] = {}
        for cert in table.certificates:
            pems = (cert.cert_pem, cert.key_pem)
            loaded = cache.get(pems) or self._cache.get(pems)
            if loaded is None:
                try:
                    loaded = load_context(*pems)
                except (ValueError, OSError) as exc:
                    loaded = CertificateError(cert.name, str(exc))
            cache[pems] = loaded
            if isinstance(loaded, CertificateError):
                errors.append(CertificateError(cert.name, loaded.message))
            else:
                by_name[cert.name] = loaded
        hosts: dict[str, ssl.SSLContext] = {}
        # the virtual host's own link to a certificate is authoritative; Certificate.hosts fills in
        for vhost in table.virtual_hosts:
            if vhost.tls_certificate is not None and vhost.tls_certificate in by_name:
                hosts.setdefault(vhost.host.lower(), by_name[vhost.tls_certificate])
        for cert in table.certificates:
            if cert.name in by_name:
                for host in cert.hosts:
                    hosts.setdefault(host.lower(), by_name[cert.name])
        exact = {h: c for h, c in hosts.items() if h and not h.startswith("*.")}
        wildcard = {h[2:]: c for h, c in hosts.items() if h.startswith("*.")}
        self._exact, self._wildcard, self._cache = exact, wildcard, cache
        self.errors = tuple(errors)
        return self.errors

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        """The context serving this SNI name (the default one when none does)."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is not None:
            return found
        dot = name.find(".")
        if dot > 0:
            found = self._wildcard.get(name[dot + 1 :])
            if found is not None:
                return found
        return self.default

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object) -> None:
        # an exception here would abort the handshake and print a traceback: serve the default instead
        try:
            context = self.context_for(server_name)
            if context is not self.default:
                connection.context = context
        except Exception as exc:
            if len(self.callback_errors) < 100:
                self.callback_errors.append(exc)
