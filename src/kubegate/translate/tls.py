"""The TLS pass: certificates from Secrets, and which virtual host serves which.

``spec.tls[].secretName`` names a Secret in the Ingress's namespace; it must be of type
``kubernetes.io/tls`` with ``tls.crt`` and ``tls.key`` holding base64 PEM. A missing or unusable Secret
is an error on the Ingress and its hosts are served without TLS (plain HTTP still works; nothing
redirects to an HTTPS that cannot answer).

Hosts: an entry's certificate is served for the virtual hosts it lists (lower-cased, exactly: a listed
``*.foo.com`` is the wildcard virtual host, not every host under it). An entry with no hosts is, as the
Kubernetes API describes ("defaults to the wildcard host setting of the controller"), the default for
that Ingress: we serve it for every rule host of the Ingress that none of its other entries lists.
When two Ingresses give one host different certificates, the oldest Ingress wins and the other gets a
warning.

Routes on a host with a certificate redirect plain HTTP to HTTPS (ingress-nginx's default) unless the
Ingress says ``ssl-redirect: "false"``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from kubegate.ir.model import Certificate
from kubegate.objects.kinds import TLS_SECRET_TYPE, Secret
from kubegate.objects.meta import ObjectKey
from kubegate.translate.context import Diagnostic
from kubegate.translate.ingress import Age, IngressFragment

NamespacedName = tuple[str, str]


def load_certificate(secret: Secret) -> tuple[str, str] | str:
    """(cert PEM, key PEM) from a TLS Secret, or what is wrong with it."""
    if secret.type != TLS_SECRET_TYPE:
        return f"has type {secret.type!r}, not {TLS_SECRET_TYPE}"
    pems: list[str] = []
    for item in ("tls.crt", "tls.key"):
        if item in secret.data:
            try:
                text = base64.b64decode(secret.data[item], validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return f"data[{item}] is not base64 of PEM text"
        elif item in secret.string_data:
            text = secret.string_data[item]
        else:
            return f"has no {item}"
        if "-----BEGIN " not in text:
            return f"data[{item}] is not PEM"
        pems.append(text)
    return pems[0], pems[1]


@dataclass(frozen=True, slots=True)
class TlsResult:
    certificates: tuple[Certificate, ...]
    # virtual host -> certificate name
    host_certificates: dict[str, str]
    diagnostics: tuple[Diagnostic, ...]


class CertificateCache:
    """Remembers decoded Secrets by identity: decoding is cheap, but not 10,000 times per change."""

    def __init__(self) -> None:
        self._seen: dict[NamespacedName, tuple[Secret, tuple[str, str] | str]] = {}

    def get(self, key: NamespacedName, secret: Secret) -> tuple[str, str] | str:
        cached = self._seen.get(key)
        if cached is not None and cached[0] is secret:
            return cached[1]
        loaded = load_certificate(secret)
        self._seen[key] = (secret, loaded)
        return loaded


def translate_tls(
    fragments: list[IngressFragment],
    secrets: Mapping[NamespacedName, Secret],
    cache: CertificateCache,
) -> TlsResult:
    diagnostics: list[Diagnostic] = []
    pems: dict[str, tuple[str, str]] = {}
    # host -> (age, cert name, ingress key)
    chosen: dict[str, tuple[Age, str, ObjectKey]] = {}
    conflicts: list[tuple[str, str, ObjectKey, str]] = []
    for fragment in sorted(fragments, key=lambda f: f.age):
        namespace = fragment.key.namespace
        listed = {host.lower() for entry in fragment.tls for host in entry.hosts}
        for index, entry in enumerate(fragment.tls):
            field = f"spec.tls[{index}]"
            if not entry.secret_name:
                diagnostics.append(
                    Diagnostic(
                        fragment.key, f"{field}.secretName", "error", "required; hosts served without TLS"
                    )
                )
                continue
            name = f"{namespace}/{entry.secret_name}"
            secret = secrets.get((namespace, entry.secret_name))
            if secret is None:
                diagnostics.append(
                    Diagnostic(
                        fragment.key,
                        f"{field}.secretName",
                        "error",
                        f"Secret {name} not found; hosts served without TLS",
                    )
                )
                continue
            loaded = cache.get((namespace, entry.secret_name), secret)
            if isinstance(loaded, str):
                diagnostics.append(
                    Diagnostic(
                        fragment.key,
                        f"{field}.secretName",
                        "error",
                        f"Secret {name} {loaded}; hosts served without TLS",
                    )
                )
                continue
            pems[name] = loaded
            if entry.hosts:
                hosts = [host.lower() for host in entry.hosts]
            else:
                hosts = [host for host in fragment.hosts if host not in listed]
            for host in hosts:
                previous = chosen.get(host)
                if previous is None:
                    chosen[host] = (fragment.age, name, fragment.key)
                elif previous[1] != name:
                    conflicts.append((host, field, fragment.key, f"{previous[2]} ({previous[1]})"))
    for host, field, key, winner in conflicts:
        diagnostics.append(
            Diagnostic(
                key,
                f"{field}.secretName",
                "warning",
                f"host {host} already has a certificate from {winner}, which is older; this one is not used",
            )
        )
    host_certificates = {host: value[1] for host, value in chosen.items()}
    served: dict[str, list[str]] = {}
    for host, name in host_certificates.items():
        served.setdefault(name, []).append(host)
    certificates = tuple(
        Certificate(
            name=name, cert_pem=pems[name][0], key_pem=pems[name][1], hosts=tuple(sorted(served[name]))
        )
        for name in sorted(served)
    )
    return TlsResult(
        certificates=certificates, host_certificates=host_certificates, diagnostics=tuple(diagnostics)
    )
