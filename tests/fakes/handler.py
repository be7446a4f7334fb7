"""The fake API server's HTTP side: URL routing, discovery, and each verb on a resource.

Requests are parsed here and carried out on the owner's ``Cluster``; every refusal is an ``ApiError``
sent as a kube ``Status``. Watches are handed to ``WatchStream``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import yaml

from tests.fakes import errors, openapi, paging, patches, resources, tables
from tests.fakes.cluster import Cluster, Obj, Watch, too_large
from tests.fakes.errors import ApiError
from tests.fakes.resources import ResourceType
from tests.fakes.selectors import parse_field_selector, parse_label_selector
from tests.fakes.strategic import strategic_merge_patch
from tests.fakes.watchstream import WatchOptions, WatchStream, parse_count

KUBE_VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-kubegate-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class Target:
    """A parsed resource URL: /api/v1/[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]."""

    def __init__(
        self, resource: ResourceType, namespace: str | None, name: str | None, subresource: str | None
    ) -> None:
        self.resource = resource
        self.namespace = namespace  # None: all namespaces (collection) or cluster-scoped
        self.name = name
        self.subresource = subresource

    @property
    def scope_namespace(self) -> str:
        return self.namespace if self.resource.namespaced and self.namespace is not None else ""


def parse_target(path: str) -> Target | None:
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    resource = resources.BY_PATH.get((group, version, rest[0]))
    if resource is None:
        return None
    if namespace is not None and not resource.namespaced:
        return None
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if name is not None and resource.namespaced and namespace is None:
        return None  # a namespaced object needs its namespace in the path
    if subresource is not None and (subresource != "status" or not resource.has_status):
        return None
    return Target(resource, namespace, name, subresource)


def _strip_type(obj: Obj) -> Obj:
    """List items carry no apiVersion/kind in kube's JSON lists."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


def _parse_version(value: str) -> int:
    return parse_count(value, "resourceVersion")


class Owner(Protocol):
    """What the handler needs from the server object that owns it (FakeApiServer)."""

    cluster: Cluster
    bookmark_interval: float
    requests: list[tuple[str, str]]
    url: str

    def _track(self, connection: socket.socket, open_: bool) -> None: ...


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: Owner


class Handler(BaseHTTPRequestHandler):
    """One connection's requests: discovery documents, or a resource operation on the owner's cluster."""

    protocol_version = "HTTP/1.1"
    server: HTTPServer

    # ------------------------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests assert on FakeApiServer.requests instead of reading a log

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner._track(self.connection, False)

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        self._send_json(error.code, error.status())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline().split(b";")[0].strip()
                try:
                    size = int(line or b"0", 16)
                except ValueError:
                    self.close_connection = True  # the stream is out of step; do not read another request
                    raise errors.bad_request(f"invalid chunk size {line!r} in the request body") from None
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        declared = self.headers.get("Content-Length") or "0"
        if not declared.isdigit():
            raise errors.bad_request(f"invalid Content-Length {declared!r}")
        length = int(declared)
        return self.rfile.read(length) if length else b""

    def _json_body(self, raw: bytes) -> Any:
        """The body as JSON (or YAML, which kube also accepts). Protobuf and CBOR are refused with 415,
        on which client-go falls back to JSON."""
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        json_types = (
            "",
            "application/json",
            patches.MERGE_PATCH,
            patches.STRATEGIC_MERGE_PATCH,
            patches.JSON_PATCH,
        )
        if content_type not in (*json_types, "application/yaml"):
            raise errors.unsupported_media_type(content_type)
        if not raw:
            raise errors.bad_request("the request body is empty; expected a JSON object")
        if content_type == "application/yaml":
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as error:
                raise errors.bad_request(f"the request body is not valid YAML: {error}") from None
        try:
            return json.loads(raw)
        except ValueError as error:
            raise errors.bad_request(f"the request body is not valid JSON: {error}") from None

    def _dispatch(self) -> None:
        owner = self.server.owner
        owner.requests.append((self.command, self.path))
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        try:
            raw = self._read_body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else b""
            if query.get("dryRun"):
                raise errors.bad_request("dryRun is not supported by the fake API server")
            if not self._discovery(url.path):
                target = parse_target(url.path)
                if target is None:
                    raise errors.page_not_found(url.path)
                self._resource(target, query, raw)
        except ApiError as error:
            try:
                self._send_error(error)
            except (BrokenPipeError, ConnectionResetError):
                # the client left before hearing the error (a test tearing down): nothing to tell
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # a bug in the fake must not look like a hung server to the test
            self._send_error(ApiError(500, "InternalError", f"fake API server error: {error!r}"))
            raise

    do_GET = _dispatch
    do_HEAD = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch

    # ----------------------------------------------------------------------------------- discovery

    def _discovery(self, path: str) -> bool:
        """Serve the discovery and health documents; False when ``path`` is not one of them."""
        stripped = path.rstrip("/") or "/"
        if self.command not in ("GET", "HEAD") and stripped in ("/api", "/apis", "/version"):
            raise errors.method_not_allowed(self.command)
        body: Any = None
        if stripped == "/version":
            body = KUBE_VERSION
        elif stripped == "/api":
            body = resources.api_versions(self.server.owner.url.removeprefix("http://"))
        elif stripped == "/apis":
            body = resources.api_group_list()
        elif stripped in ("/healthz", "/readyz", "/livez"):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        else:
            parts = stripped.strip("/").split("/")
            if parts == ["api", "v1"]:
                body = resources.api_resource_list("", "v1")
            elif len(parts) == 2 and parts[0] == "apis":
                body = resources.api_group(parts[1])
                if body is None:
                    raise errors.page_not_found(path)
            elif len(parts) == 3 and parts[0] == "apis":
                body = resources.api_resource_list(parts[1], parts[2])
                if body is None:
                    raise errors.page_not_found(path)
            elif parts == ["openapi", "v3"]:
                body = openapi.index()
            elif parts[:2] == ["openapi", "v3"]:
                body = openapi.document_for(stripped)
                if body is None:
                    raise errors.page_not_found(path)
            elif parts[0] == "openapi":
                raise errors.page_not_found(path)  # no v2 document; kubectl uses v3 (see openapi.py)
        if body is None:
            return False
        if self.command not in ("GET", "HEAD"):
            raise errors.method_not_allowed(self.command)
        self._send_json(200, body)
        return True

    # ----------------------------------------------------------------------------------- resources

    def _resource(self, target: Target, query: dict[str, str], raw: bytes) -> None:
        cluster = self.server.owner.cluster
        resource = target.resource
        namespace = target.scope_namespace
        status = target.subresource == "status"
        method = self.command
        if target.name is None:
            if method in ("GET", "HEAD"):
                if query.get("watch") in ("1", "true", "True"):
                    self._watch(target, query)
                else:
                    self._list(target, query)
            elif method == "POST":
                if resource.namespaced and target.namespace is None:
                    raise errors.method_not_allowed(method)
                created = cluster.create(resource, namespace, self._json_body(raw))
                self._send_json(201, created)
            elif method == "DELETE":
                self._delete_collection(target, query)
            else:
                raise errors.method_not_allowed(method)
            return
        name = target.name
        if method in ("GET", "HEAD"):
            obj = cluster.get(resource, namespace, name)
            if self._table_wanted():
                metadata = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                self._send_json(
                    200, tables.table(resource.kind, [obj], metadata, query.get("includeObject", ""))
                )
            else:
                self._send_json(200, obj)
        elif method == "PUT":
            was_created, stored = cluster.update(
                resource, namespace, name, self._json_body(raw), status=status
            )
            self._send_json(201 if was_created else 200, stored)
        elif method == "PATCH":
            self._patch(target, query, raw)
        elif method == "DELETE" and not status:
            options = self._json_body(raw) if raw.strip() else {}
            if not isinstance(options, dict):
                raise errors.bad_request("DeleteOptions must be a JSON object")
            preconditions = options.get("preconditions") or {}
            if not isinstance(preconditions, dict):
                raise errors.bad_request("DeleteOptions.preconditions must be an object")
            deleted, obj = cluster.delete(
                resource,
                namespace,
                name,
                precondition_version=preconditions.get("resourceVersion"),
                precondition_uid=preconditions.get("uid"),
            )
            self._send_json(200 if deleted else 202, obj)
        else:
            raise errors.method_not_allowed(method)

    def _table_wanted(self) -> bool:
        return tables.wants_table(self.headers.get("Accept", ""))

    def _selectors(self, target: Target, query: dict[str, str]) -> Watch:
        return Watch(
            target.resource,
            target.namespace if target.resource.namespaced else None,
            parse_label_selector(query.get("labelSelector", "")),
            parse_field_selector(query.get("fieldSelector", ""), target.resource.kind),
        )

    def _list(self, target: Target, query: dict[str, str]) -> None:
        cluster = self.server.owner.cluster
        probe = self._selectors(target, query)
        version = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        limit = paging.parse_limit(query.get("limit", ""))
        token = query.get("continue", "")
        at: int | None = None
        after: paging.Key | None = None
        if token:
            if version or match:
                raise errors.bad_request("specifying resource version is not allowed when using continue")
            continuation = paging.decode(token)
            at, after = continuation.resource_version, continuation.after
            if at < cluster.oldest_resource_version:
                raise paging.expired_continuation()
        elif match == "Exact":
            if version in ("", "0"):
                raise errors.bad_request("resourceVersionMatch=Exact needs a resourceVersion other than 0")
            at = _parse_version(version)
        elif match not in ("", "NotOlderThan"):
            raise errors.bad_request(f"unsupported resourceVersionMatch {match!r}")
        elif version not in ("", "0"):
            wanted = _parse_version(version)
            if wanted > cluster.resource_version:
                raise too_large(wanted, cluster.resource_version)
        try:
            list_version, items = cluster.list_objects(
                target.resource, probe.namespace, probe.labels, probe.fields, at
            )
        except ApiError as error:
            if token and error.code == 410:
                raise paging.expired_continuation() from None  # compacted between the pages
            raise
        selected = bool(probe.labels or probe.fields)
        page, metadata = paging.cut(items, limit, after, list_version, count_remaining=not selected)
        if self._table_wanted():
            include = query.get("includeObject", "")
            self._send_json(200, tables.table(target.resource.kind, page, metadata, include))
            return
        self._send_json(
            200,
            {
                "kind": target.resource.list_kind,
                "apiVersion": target.resource.api_version,
                "metadata": metadata,
                "items": [_strip_type(item) for item in page],
            },
        )

    def _delete_collection(self, target: Target, query: dict[str, str]) -> None:
        cluster = self.server.owner.cluster
        probe = self._selectors(target, query)
        with cluster.lock:
            _, items = cluster.list_objects(target.resource, probe.namespace, probe.labels, probe.fields)
            deleted = []
            for item in items:
                meta = item["metadata"]
                _, obj = cluster.delete(target.resource, meta.get("namespace", ""), meta["name"])
                deleted.append(_strip_type(obj))
            version = cluster.resource_version
        self._send_json(
            200,
            {
                "kind": target.resource.list_kind,
                "apiVersion": target.resource.api_version,
                "metadata": {"resourceVersion": str(version)},
                "items": deleted,
            },
        )

    def _patch(self, target: Target, query: dict[str, str], raw: bytes) -> None:
        cluster = self.server.owner.cluster
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        status = target.subresource == "status"
        assert target.name is not None
        if content_type == patches.APPLY_PATCH:
            if not query.get("fieldManager"):
                raise errors.bad_request(
                    "PATCH requests with apply-patch+yaml content type need a fieldManager"
                )
            try:
                applied = yaml.safe_load(raw)
            except yaml.YAMLError as error:
                raise errors.bad_request(f"the apply body is not valid YAML: {error}") from None
            if not isinstance(applied, dict):
                raise errors.bad_request("the apply body must be an object")
            try:
                cluster.get(target.resource, target.scope_namespace, target.name)
            except ApiError as error:
                if error.code != 404 or status:
                    raise
                body = {**applied, "metadata": {**(applied.get("metadata") or {}), "name": target.name}}
                self._send_json(201, cluster.create(target.resource, target.scope_namespace, body))
                return
            kind = target.resource.kind
            edit: Callable[[Obj], Any] = lambda current: strategic_merge_patch(kind, current, applied)  # noqa: E731
        elif content_type in (patches.MERGE_PATCH, patches.STRATEGIC_MERGE_PATCH):
            body = self._json_body(raw)
            if not isinstance(body, dict):
                raise errors.bad_request("a merge patch must be a JSON object")
            if content_type == patches.STRATEGIC_MERGE_PATCH:
                kind = target.resource.kind
                edit = lambda current: strategic_merge_patch(kind, current, body)  # noqa: E731
            else:
                edit = lambda current: patches.merge_patch(current, body)  # noqa: E731
        elif content_type == patches.JSON_PATCH:
            operations = self._json_body(raw)
            edit = lambda current: patches.json_patch(current, operations)  # noqa: E731
        else:
            raise errors.unsupported_media_type(content_type or "(none)")
        self._send_json(
            200, cluster.modify(target.resource, target.scope_namespace, target.name, edit, status=status)
        )

    # --------------------------------------------------------------------------------------- watch

    def _watch(self, target: Target, query: dict[str, str]) -> None:
        owner = self.server.owner
        options = WatchOptions.from_query(query, owner.bookmark_interval, self._table_wanted())
        stream = WatchStream(
            self.wfile, self.connection, owner.cluster, self._selectors(target, query), options
        )
        self.close_connection = True  # one watch per connection, as the stream's end is the response's end
        if stream.run(begin=self._start_stream):
            with contextlib.suppress(OSError):
                self.wfile.write(b"0\r\n\r\n")
        else:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
