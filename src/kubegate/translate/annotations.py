"""The ingress-nginx annotations kubegate understands, parsed once per Ingress.

Both prefixes are read: ``nginx.ingress.kubernetes.io/`` (ingress-nginx) and ``ingress.kubernetes.io/``
(the older, controller-neutral spelling); when both are set the nginx one wins. A value that does not
parse becomes a warning on the Ingress and the annotation is ignored, so one typo never takes the whole
Ingress down.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubegate.ir.model import Balance
from kubegate.objects.meta import ObjectKey
from kubegate.translate.context import Diagnostic

PREFIXES = ("nginx.ingress.kubernetes.io/", "ingress.kubernetes.io/")

# nginx's size syntax: a number with an optional k/m/g suffix (case-insensitive); "0" disables the limit
_SIZE = re.compile(r"^(?P<number>\d+)(?P<unit>[kKmMgG]?)$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# a rewrite target with $1.. captures only makes sense against a regex location, so ingress-nginx
# treats such an Ingress as use-regex
_CAPTURE = re.compile(r"\$\d")
_HASH_BY = re.compile(r"^\$(remote_addr|request_uri|cookie_[A-Za-z0-9_\-]+|http_[A-Za-z0-9_\-]+)$")


@dataclass(frozen=True, slots=True)
class IngressAnnotations:
    rewrite_target: str | None = None
    use_regex: bool = False
    # redirect plain HTTP to HTTPS; only takes effect on hosts with a certificate (ingress-nginx default)
    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    app_root: str | None = None
    # bytes; 0 means unlimited (nginx's client_max_body_size 0); None the controller default
    max_body_size: int | None = None
    upstream_vhost: str | None = None
    backend_protocol: str = "HTTP"
    balance: Balance | None = None
    hash_by: str | None = None
    diagnostics: tuple[Diagnostic, ...] = field(default=())

    @property
    def regex(self) -> bool:
        """Whether Prefix/ImplementationSpecific paths are regular expressions."""
        return self.use_regex or (
            self.rewrite_target is not None and bool(_CAPTURE.search(self.rewrite_target))
        )


_DEFAULTS = IngressAnnotations()


def _lookup(annotations: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for prefix in PREFIXES:
        key = prefix + name
        if key in annotations:
            return key, annotations[key]
    return None


def _bool(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return None


def parse_size(value: str) -> int | None:
    """nginx size syntax ("8m", "512k", "1g", "100") in bytes; None when it does not parse."""
    match = _SIZE.match(value.strip())
    if match is None:
        return None
    return int(match.group("number")) * _UNITS[match.group("unit").lower()]


def parse_annotations(key: ObjectKey, annotations: Mapping[str, str]) -> IngressAnnotations:
    """Read every annotation we understand from one Ingress's metadata."""
    if not any(name.startswith(PREFIXES) for name in annotations):
        # most Ingresses carry none of ours: skip the parsing (it is most of a fragment's cost)
        return _DEFAULTS
    diagnostics: list[Diagnostic] = []
    values: dict[str, object] = {}

    def warn(annotation: str, message: str) -> None:
        diagnostics.append(Diagnostic(key, f"metadata.annotations[{annotation}]", "warning", message))

    def read(name: str, parse: Callable[[str], object | None], expected: str) -> object | None:
        found = _lookup(annotations, name)
        if found is None:
            return None
        annotation, raw = found
        parsed = parse(raw)
        if parsed is None:
            warn(annotation, f"invalid value {raw!r} ({expected}); annotation ignored")
        return parsed

    for name, attribute in (
        ("use-regex", "use_regex"),
        ("ssl-redirect", "ssl_redirect"),
        ("force-ssl-redirect", "force_ssl_redirect"),
    ):
        parsed = read(name, _bool, 'expected "true" or "false"')
        if parsed is not None:
            values[attribute] = parsed

    rewrite = read("rewrite-target", lambda raw: raw or None, "expected a path")
    if rewrite is not None:
        values["rewrite_target"] = rewrite

    app_root = read("app-root", lambda raw: raw if raw.startswith("/") else None, 'expected a path "/..."')
    if app_root is not None:
        values["app_root"] = app_root

    size = read("proxy-body-size", parse_size, 'expected a size like "8m", "512k", "1g" or "0"')
    if size is not None:
        values["max_body_size"] = size

    vhost = read("upstream-vhost", lambda raw: raw.strip() or None, "expected a host name")
    if vhost is not None:
        values["upstream_vhost"] = vhost

    protocol = read(
        "backend-protocol",
        lambda raw: raw.strip().upper() if raw.strip().upper() in ("HTTP", "HTTPS") else None,
        "supported: HTTP, HTTPS",
    )
    if protocol is not None:
        values["backend_protocol"] = protocol

    balances: dict[str, Balance] = {"round_robin": "round_robin", "ewma": "least_request"}
    balance = read("load-balance", lambda raw: balances.get(raw.strip()), "supported: round_robin, ewma")
    if balance is not None:
        values["balance"] = balance

    hash_by = read(
        "upstream-hash-by",
        lambda raw: raw.strip() if _HASH_BY.match(raw.strip()) else None,
        "supported: $remote_addr, $request_uri, $cookie_NAME, $http_NAME",
    )
    if hash_by is not None:
        # hashing replaces the balancing algorithm, as in ingress-nginx
        values["balance"] = "hash"
        values["hash_by"] = hash_by

    return IngressAnnotations(diagnostics=tuple(diagnostics), **values)  # type: ignore[arg-type]
