"""Just enough OpenAPI v3 for kubectl: the per-GroupVersion documents list each resource's PATCH operation.

kubectl (1.27+) validates manifests on the server when the server advertises the ``fieldValidation``
query parameter on the kind's PATCH operation in ``/openapi/v3``; otherwise it wants the full OpenAPI v2
schema to validate on the client. Advertising the parameter (which this server accepts and, having no
schemas, does not enforce) lets kubectl work without ``--validate=false``. No component schemas are
served, so kubectl's apply falls back to its compiled-in types for strategic merge patch metadata.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.fakes.resources import RESOURCE_TYPES, ResourceType

_QUERY_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _object_path(resource: ResourceType) -> str:
    base = "/" + _gv_path(resource.group, resource.version)
    if resource.namespaced:
        return f"{base}/namespaces/{{namespace}}/{resource.plural}/{{name}}"
    return f"{base}/{resource.plural}/{{name}}"


def group_version_document(group: str, version: str) -> dict[str, Any] | None:
    served = [r for r in RESOURCE_TYPES if r.group == group and r.version == version]
    if not served:
        return None
    paths: dict[str, Any] = {}
    for resource in served:
        paths[_object_path(resource)] = {
            "patch": {
                "operationId": f"patch{resource.kind}",
                "parameters": [
                    {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                    for name in _QUERY_PARAMETERS
                ],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": group,
                    "version": version,
                    "kind": resource.kind,
                },
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kubegate fake)", "version": "v1.34.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def index() -> dict[str, Any]:
    """GET /openapi/v3: where each GroupVersion's document lives (with a content hash, as kube serves)."""
    paths: dict[str, Any] = {}
    seen: set[tuple[str, str]] = set()
    for resource in RESOURCE_TYPES:
        key = (resource.group, resource.version)
        if key in seen:
            continue
        seen.add(key)
        document = json.dumps(group_version_document(*key), sort_keys=True).encode()
        digest = hashlib.sha512(document).hexdigest()[:128].upper()
        path = _gv_path(*key)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def document_for(path: str) -> dict[str, Any] | None:
    """The document for ``/openapi/v3/api/v1`` or ``/openapi/v3/apis/GROUP/VERSION``."""
    parts = path.strip("/").split("/")[2:]
    if len(parts) == 2 and parts[0] == "api":
        return group_version_document("", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return group_version_document(parts[1], parts[2])
    return None
