"""The built-in HTTP/1.1 data plane: ``ProxyServer`` with its settings, access-log record and TLS contexts."""

from kubegate.planes.proxy.http import ProxySettings
from kubegate.planes.proxy.server import AccessLog, AccessRecord, ProxyServer, ProxyStats
from kubegate.planes.proxy.tls import CertificateError, TlsContexts

__all__ = [
    "AccessLog",
    "AccessRecord",
    "CertificateError",
    "ProxyServer",
    "ProxySettings",
    "ProxyStats",
    "TlsContexts",
]
