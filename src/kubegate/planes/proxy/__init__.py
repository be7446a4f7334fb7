"""The built-in HTTP/1.1 data plane: ``ProxyServer`` with its settings and access-log record."""

from kubegate.planes.proxy.http import ProxySettings
from kubegate.planes.proxy.server import AccessLog, AccessRecord, ProxyServer, ProxyStats

__all__ = ["AccessLog", "AccessRecord", "ProxyServer", "ProxySettings", "ProxyStats"]
