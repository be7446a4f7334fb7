"""A fake Kubernetes API server for tests: real HTTP, real watch streams, kube's semantics.

No kube-apiserver can run here, so the Kubernetes source, leader election and status write-back are
tested against this. It speaks the JSON REST API on 127.0.0.1 (port chosen by the OS) in a background
thread:

- resources: v1 services (+status), endpoints, pods (+status), secrets, configmaps, events, namespaces
  (+status), nodes (+status); discovery.k8s.io/v1 endpointslices; networking.k8s.io/v1 ingresses (+status),
  ingressclasses; coordination.k8s.io/v1 leases; events.k8s.io/v1 events. Namespaced, all-namespace and
  cluster-scoped paths; discovery (/api, /api/v1, /apis, /apis/G, /apis/G/V), /version, /healthz.
- one global integer resourceVersion; uid, creationTimestamp; generation for the kinds kube keeps it on
  (Ingress, IngressClass, EndpointSlice, Pod: bumped when anything outside metadata and status changes);
  status subresources; no-op writes change nothing.
- list with labelSelector / fieldSelector; ``limit``/``continue`` pages that all show the first page's
  snapshot (410 once it is compacted; see paging.py); ``resourceVersionMatch=Exact`` rebuilds the state
  at that version from history.
- watch: newline-delimited JSON events over chunked encoding; replay after a resourceVersion; a
  resourceVersion older than the history kept gets HTTP 200 and an ERROR event carrying a 410 Expired Status
  (what kube-apiserver's watch cache sends); bookmarks; timeoutSeconds; synthetic ADDED events when the
  resourceVersion is unset or "0"; sendInitialEvents with the ``k8s.io/initial-events-end`` bookmark.
- create (201, 409 AlreadyExists, generateName), update (409 Conflict on a stale resourceVersion),
  patch (JSON merge patch; strategic merge patch with merge keys for the served kinds' merging lists and
  kubectl's directives, see strategic.py; JSON patch; server-side apply approximated as create or
  strategic merge, without field ownership or managedFields), delete (finalizers honoured: the object is
  marked and removed when they are cleared; deleting a Namespace deletes its contents at once),
  deletecollection; 404/400/405/415/422/504 as Status objects.
- defaulting and allocation where clients see it (Service ClusterIP from 10.96.0.0/12, nodePorts,
  targetPort, protocol; Namespace finalizer and phase; see defaults.py) and the validation in
  validation.py; kubectl works against it (server-side Table printing, a minimal /openapi/v3).

Simplifications, on purpose: no authentication; unless ``strict=True``, objects may be created in
Namespaces that do not exist and Ingress hosts are not validated; no admission and no controllers
(Endpoints are not derived from Services, no ``kubernetes`` Service); dryRun is refused (400) rather than
faked; list items omit apiVersion/kind exactly as the real server's JSON lists do; v1 and events.k8s.io/v1
Events are stored separately (kube converts between them); Service and Ingress status start as
``{"loadBalancer": {}}`` and change only through /status (``replace_status``/``patch(status=True)``).

Use::

    with FakeApiServer(bookmark_interval=0.2) as api:
        client = AsyncClient(KubeConfig.from_dict(api.kubeconfig()))   # or api.write_kubeconfig(path)
        api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {...}})
        api.drop_watches(abrupt=True); api.compact(); api.expire_watches()   # failure scenarios
        assert ("GET", "/api/v1/services") in api.requests
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import socket
import sys
import threading
from types import TracebackType
from typing import Any

import yaml

from tests.fakes import errors, patches, resources
from tests.fakes.cluster import Cluster, EndStream, ExpireStream
from tests.fakes.errors import ApiError
from tests.fakes.handler import Handler, HTTPServer
from tests.fakes.resources import ResourceType

SEED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class FakeApiServer:
    """The fake API server: HTTP in a background thread plus direct, in-process manipulation for tests.

    Direct methods have the same effects as the HTTP API (new resourceVersion, watchers told) and raise
    ``ApiError`` (with the same code, reason and message the HTTP API would send) on refusal.
    """

    def __init__(self, *, bookmark_interval: float = 1.0, strict: bool = False, port: int = 0) -> None:
        """``strict``: also refuse objects in missing Namespaces and Ingress hosts that are not DNS names,
        as kube does (off by default so scenario tests need not create Namespaces first). ``port``: 0 (the
        default) lets the OS choose; tests should keep it so."""
        self.bookmark_interval = bookmark_interval
        self.port = port
        self.cluster = Cluster(strict=strict)
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        for namespace in SEED_NAMESPACES:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> str:
        if self._server is not None:
            return self.url
        server = HTTPServer(("127.0.0.1", self.port), Handler)
        server.owner = self
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"fake-apiserver-{port}"
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for watch in self.cluster.watches():
            watch.queue.put(EndStream(abrupt=True))
        server.shutdown()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeApiServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig for this server (lightkube: ``KubeConfig.from_dict``; kubectl: write it as YAML).

        The token is never checked; it is there because clients insist on having a user.
        """
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
            ],
            "current-context": "fake",
        }

    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        with open(path, "w", encoding="utf-8") as out:
            yaml.safe_dump(self.kubeconfig(namespace), out)
        return path

    # --------------------------------------------------------------------------- direct manipulation

    @property
    def resource_version(self) -> int:
        return self.cluster.resource_version

    @staticmethod
    def _resource(api_version: str, kind: str) -> ResourceType:
        resource = resources.find_by_kind(api_version, kind)
        if resource is None:
            raise errors.bad_request(
                f"the fake API server does not serve {kind} in {api_version or '(no apiVersion)'}"
            )
        return resource

    def _locate(self, obj: dict[str, Any]) -> tuple[ResourceType, str]:
        if not isinstance(obj, dict):
            raise errors.bad_request("an object must be a mapping")
        resource = self._resource(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        namespace = (obj.get("metadata") or {}).get("namespace") or "default"
        return resource, namespace if resource.namespaced else ""

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create as POST would (namespace from metadata, "default" if unset); returns the stored object."""
        resource, namespace = self._locate(obj)
        return copy.deepcopy(self.cluster.create(resource, namespace, obj))

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT: a metadata.resourceVersion, if given, must be current (else ApiError 409 Conflict); a missing
        Service, Endpoints, Event or Lease is created (as kube does), any other kind is a 404."""
        resource, namespace = self._locate(obj)
        name = str((obj.get("metadata") or {}).get("name", ""))
        return copy.deepcopy(self.cluster.update(resource, namespace, name, obj, status=False)[1])

    def replace_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT on /status: only .status changes."""
        resource, namespace = self._locate(obj)
        name = str((obj.get("metadata") or {}).get("name", ""))
        return copy.deepcopy(self.cluster.update(resource, namespace, name, obj, status=True)[1])

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        """A JSON merge patch on the object (or on /status with ``status=True``)."""
        resource = self._resource(api_version, kind)
        scope = namespace if resource.namespaced else ""
        edited = self.cluster.modify(
            resource, scope, name, lambda current: patches.merge_patch(current, patch), status=status
        )
        return copy.deepcopy(edited)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        resource = self._resource(api_version, kind)
        self.cluster.delete(resource, namespace if resource.namespaced else "", name)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        resource = self._resource(api_version, kind)
        try:
            return copy.deepcopy(self.cluster.get(resource, namespace if resource.namespaced else "", name))
        except ApiError:
            return None

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Current objects of a kind (all namespaces when ``namespace`` is None), in key order."""
        resource = self._resource(api_version, kind)
        _, items = self.cluster.list_objects(resource, namespace if resource.namespaced else None)
        return copy.deepcopy(items)

    def compact(self) -> None:
        self.cluster.compact()

    def drop_watches(self, *, abrupt: bool = False) -> None:
        """End every open watch now: with the final chunk, or (``abrupt``) by cutting the TCP connection."""
        for watch in self.cluster.watches():
            watch.queue.put(EndStream(abrupt=abrupt))

    def expire_watches(self) -> None:
        """Send each open watch an ERROR event with a 410 Expired Status, then end its stream."""
        for watch in self.cluster.watches():
            watch.queue.put(ExpireStream())

    def watch_count(self) -> int:
        """Watch streams open now (for tests that wait for a client to (re)connect)."""
        return len(self.cluster.watches())


def main(argv: list[str] | None = None) -> int:
    """Run the fake on its own, for trying kubectl or ``kubegate serve --kubernetes`` by hand."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.apiserver", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--kubeconfig", metavar="FILE", help="write a kubeconfig for the server here")
    parser.add_argument(
        "--strict", action="store_true", help="namespaces must exist; Ingress hosts validated"
    )
    parser.add_argument(
        "-f", "--filename", action="append", default=[], metavar="YAML", help="objects to create"
    )
    args = parser.parse_args(argv)
    server = FakeApiServer(strict=args.strict, port=args.port)
    try:
        for path in args.filename:
            with open(path, encoding="utf-8") as manifest:
                for document in yaml.safe_load_all(manifest):
                    if document:
                        server.create(document)
        url = server.start()
    except (OSError, yaml.YAMLError, ApiError) as error:
        print(f"fake API server: {error}", file=sys.stderr)
        return 1
    if args.kubeconfig:
        server.write_kubeconfig(args.kubeconfig)
    print(
        f"fake API server at {url}" + (f"; kubeconfig {args.kubeconfig}" if args.kubeconfig else ""),
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


__all__ = ["ApiError", "FakeApiServer"]

if __name__ == "__main__":
    sys.exit(main())
