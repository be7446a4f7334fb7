"""Compile a RoutingTable into a fast matcher: (host, path) -> route, backend and virtual host.

Path policy (applied before matching; the request is still forwarded with the path the client sent,
unless a rewrite applies):

- only origin-form targets (``/...``) are routed; anything else is a 400.
- percent-encoded *unreserved* characters (RFC 3986 2.3: ALPHA DIGIT ``-._~``) are decoded, so
  ``/%61pi`` routes like ``/api``; every other escape stays as written (upper-cased hex), so ``%2F``
  never becomes a path separator.
- dot-segments are resolved (RFC 3986 5.2.4) and runs of ``/`` are merged. A path that climbs above
  the root (``/../x``) is a 400, not silently clamped: a client sending it is probing.
- the query string is not part of the match.

Host policy: lower-cased, port stripped (also for ``[v6]:port``), then exact virtual host, then a
``*.suffix`` wildcard matching exactly one label, then the ``""`` virtual host, then the table's
default backend.

Matching keeps the IR's first-match-wins order exactly, without scanning every route: exact paths and
prefixes go into dicts mapping to their index in the ordered list; a lookup walks the path's element
prefixes (longest first) and takes the lowest index among the hits and the regex routes, which are the
only ones scanned. The lowest index is the first route of the list that matches, as the IR demands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubegate.ir.model import Backend, Route, RoutingTable, VirtualHost


class BadPath(ValueError):
    """The request target cannot be routed (not origin-form, or above the root)."""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


def _decode_unreserved(path: str) -> str:
    if "%" not in path:
        return path
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == "%" and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            code = int(path[i + 1 : i + 3], 16)
            out.append(chr(code) if code in _UNRESERVED else "%" + path[i + 1 : i + 3].upper())
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def normalize_path(target: str) -> tuple[str, str]:
    """Split a request target into (normalised path, query) or raise BadPath.

    The query is returned with its ``?`` (or as ``""``) so it can be re-attached verbatim.
    """
    if not target.startswith("/"):
        raise BadPath(f"request target {target[:64]!r} is not origin-form")
    q = target.find("?")
    raw, query = (target, "") if q < 0 else (target[:q], target[q:])
    h = raw.find("#")
    if h >= 0:
        raw = raw[:h]
    path = _decode_unreserved(raw)
    if "//" not in path and "/." not in path:
        return path, query
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == "..":
            if not out:
                raise BadPath(f"path {raw[:64]!r} climbs above the root")
            out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and len(segments) > 1
    result = "/" + "/".join(out)
    if trailing and out:
        result += "/"
    return result, query


def normalize_host(host: str) -> str:
    """Lower-case and strip the port; ``[::1]:8080`` becomes ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(":")
    if colon >= 0 and host.count(":") == 1:
        host = host[:colon]
    return host.rstrip(".")


@dataclass(slots=True, frozen=True)
class Match:
    """The outcome of a lookup. ``route`` is None when a default backend answers."""

    backend_choices: tuple[Backend, ...]
    route: Route | None
    vhost: VirtualHost | None
    # the path to forward when the route rewrites it, else None (forward what the client sent)
    rewritten: str | None = None


class CompiledHost:
    """One virtual host's routes, indexed for lookup."""

    __slots__ = ("_exact", "_prefix", "_regex", "_root_prefix", "routes", "vhost")

    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost
        self.routes = vhost.routes
        self._exact: dict[str, int] = {}
        self._prefix: dict[str, int] = {}
        self._regex: list[tuple[int, re.Pattern[str]]] = []
        self._root_prefix: int | None = None
        for index, route in enumerate(vhost.routes):
            if route.match == "Exact":
                self._exact.setdefault(route.path, index)
            elif route.match == "Prefix":
                key = route.path.rstrip("/") or "/"
                if key == "/":
                    if self._root_prefix is None:
                        self._root_prefix = index
                else:
                    self._prefix.setdefault(key, index)
            else:
                try:
                    self._regex.append((index, re.compile(route.path)))
                except re.error:
                    # the translator validates regexes; an invalid one here simply never matches
                    continue

    def lookup(self, path: str) -> tuple[int, re.Match[str] | None] | None:
        """The index of the first matching route and the regex match (for Regex routes)."""
        best = self._exact.get(path, -1)
        if self._prefix:
            # walk element prefixes longest first: "/a/b/c" -> "/a/b/c", "/a/b", "/a"
            probe = path.rstrip("/")
            while probe:
                hit = self._prefix.get(probe)
                if hit is not None and (best < 0 or hit < best):
                    best = hit
                cut = probe.rfind("/")
                probe = probe[:cut]
        if self._root_prefix is not None and (best < 0 or self._root_prefix < best):
            best = self._root_prefix
        for index, pattern in self._regex:
            if best >= 0 and index > best:
                break
            m = pattern.match(path)
            if m is not None:
                return index, m
        return (best, None) if best >= 0 else None


def rewrite(route: Route, path: str, regex_match: re.Match[str] | None, query: str) -> str | None:
    """Apply rewrite_target the way ingress-nginx does, keeping the query string."""
    target = route.options.rewrite_target
    if target is None:
        return None
    if route.match == "Regex" and regex_match is not None:
        groups = regex_match.groups()

        def sub(m: re.Match[str]) -> str:
            n = int(m.group(1))
            return (groups[n - 1] or "") if n <= len(groups) else ""

        new = _GROUP_REF.sub(sub, target)
    elif route.match == "Prefix":
        prefix = route.path.rstrip("/")
        rest = path[len(prefix) :] if prefix else path
        new = target.rstrip("/") + rest if rest.startswith("/") else target + rest
    else:
        new = target
    if not new.startswith("/"):
        new = "/" + new
    return new + query


_GROUP_REF = re.compile(r"\$([1-9])")
_CACHE_ENTRIES = 4096
_CACHE_KEY_MAX = 512


class Router:
    """A compiled routing table. Immutable once built; swap whole routers to update."""

    __slots__ = ("_any", "_cache", "_exact", "_wildcard", "default_backend", "table")

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.default_backend = table.default_backend
        self._exact: dict[str, CompiledHost] = {}
        self._wildcard: dict[str, CompiledHost] = {}
        self._any: CompiledHost | None = None
        # (host, target) -> outcome: matching is a pure function of the two and a router never
        # changes, so repeated requests skip normalising and lookup. Bounded in entries and key size.
        self._cache: dict[tuple[str, str], Match | None] = {}
        for vhost in table.virtual_hosts:
            host = vhost.host.lower()
            compiled = CompiledHost(vhost)
            if host == "":
                self._any = compiled
            elif host.startswith("*."):
                self._wildcard.setdefault(host[2:], compiled)
            else:
                self._exact.setdefault(host, compiled)

    def host_for(self, host: str) -> CompiledHost | None:
        found = self._exact.get(host)
        if found is not None:
            return found
        if self._wildcard:
            dot = host.find(".")
            if dot > 0:
                found = self._wildcard.get(host[dot + 1 :])
                if found is not None:
                    return found
        return self._any

    def match(self, host: str, target: str) -> Match | None:
        """Route one request; raises BadPath for unroutable targets, returns None for 404."""
        key = (host, target)
        cache = self._cache
        try:
            return cache[key]
        except KeyError:
            pass
        found = self._match(host, target)  # BadPath is not cached: it is rare and costs little
        if len(host) + len(target) <= _CACHE_KEY_MAX:
            if len(cache) >= _CACHE_ENTRIES:
                cache.clear()
            cache[key] = found
        return found

    def _match(self, host: str, target: str) -> Match | None:
        path, query = normalize_path(target)
        compiled = self.host_for(normalize_host(host))
        if compiled is not None:
            hit = compiled.lookup(path)
            if hit is not None:
                route = compiled.routes[hit[0]]
                return Match(route.backends, route, compiled.vhost, rewrite(route, path, hit[1], query))
            if compiled.vhost.default_backend is not None:
                return Match((compiled.vhost.default_backend,), None, compiled.vhost)
        if self.default_backend is not None:
            return Match((self.default_backend,), None, compiled.vhost if compiled else None)
        return None
