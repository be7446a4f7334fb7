"""deploy/: the container image recipe, the plain manifests and the Helm chart they are rendered from.

No docker daemon and no cluster exist here, so each artifact is checked as far as is possible offline:
the Dockerfile by parsing it (stages, COPY sources against the build context, pins, users); the manifests
by `kubegate check`, by a strict walk against the Kubernetes API schema of lightkube-models (unknown or
misspelt fields, wrong types, missing required fields) and by reading them as a user would (probes, ports,
RBAC, flags); the chart by `helm lint` and `helm template` (helm from deploy/tools/install-helm).
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import io
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lightkube.resources
import msgspec.inspect as schema
import pytest
import yaml
from lightkube.core.resource import NamespacedResource, Resource
from lightkube.core.resource_registry import resource_registry

from kubegate.cli import _parser
from kubegate.pools import load_pools
from kubegate.sources.kubernetes.informer import RESOURCES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
MANIFESTS = DEPLOY / "manifests"
CHART = DEPLOY / "helm" / "kubegate"
NAMESPACE = "kubegate"

Obj = dict[str, Any]

# --------------------------------------------------------------------------------------------------------
# What the code needs from the API server, per workload: (scope, apiGroup, resource) -> verbs, where scope
# is "cluster" (ClusterRole bound cluster-wide) or a namespace (Role). Change this table together with the
# code that makes the requests; the RBAC in the chart must grant exactly this, no more and no less.
Grants = dict[tuple[str, str, str], frozenset[str]]
READ = frozenset({"get", "list", "watch"})
GATEWAY_NEEDS: Grants = {
    # the informers (sources/kubernetes/informer.py RESOURCES): list, then watch from the list's version
    ("cluster", "", "services"): READ,
    ("cluster", "", "endpoints"): READ,
    ("cluster", "", "pods"): READ,
    ("cluster", "", "secrets"): READ,
    ("cluster", "discovery.k8s.io", "endpointslices"): READ,
    ("cluster", "networking.k8s.io", "ingresses"): READ,
    ("cluster", "networking.k8s.io", "ingressclasses"): READ,
    # status writes (status_writer.py): merge patches of LoadBalancer addresses on Services and of the
    # published address on Ingresses; never a PUT, so no update
    ("cluster", "", "services/status"): frozenset({"patch"}),
    ("cluster", "networking.k8s.io", "ingresses/status"): frozenset({"patch"}),
    # events.py: create a new Event, patch its count when it repeats
    ("cluster", "", "events"): frozenset({"create", "patch"}),
    # leader.py: read, create when missing, renew or take over with a resourceVersion-checked PUT
    (NAMESPACE, "coordination.k8s.io", "leases"): frozenset({"get", "create", "update"}),
}
NODE_AGENT_NEEDS: Grants = {
    # the kernel rules are made of Services and their endpoints only: no Secrets, no Ingresses, no writes
    ("cluster", "", "services"): READ,
    ("cluster", "", "endpoints"): READ,
    ("cluster", "", "pods"): READ,
    ("cluster", "discovery.k8s.io", "endpointslices"): READ,
}

# Flags the manifests pass that the command line does not have yet (being added with the Kubernetes
# source). Once the parser knows one, the test checks it like any other; until then it is only allowed.
PENDING_FLAGS = frozenset({"--kubernetes", "--namespace", "--publish-service", "--leader-election-namespace"})

# kinds that configure the cluster rather than traffic: `kubegate check` skips them, and that is fine
NOT_TRAFFIC_KINDS = frozenset(
    {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "DaemonSet",
        "PodDisruptionBudget",
    }
)


# --------------------------------------------------------------------------------------------------------
# Helpers


def load_documents(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def manifest_documents() -> list[Obj]:
    docs: list[Obj] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend(load_documents(path.read_text(encoding="utf-8")))
    return docs


def find(docs: list[Obj], kind: str, name: str) -> Obj:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(workload: Obj) -> Obj:
    containers: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag_values(args: list[str]) -> dict[str, str]:
    """``--flag=value`` arguments as a mapping (the manifests always use the = form)."""
    values: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            values[name] = value
    return values


def kubegate_command() -> list[str]:
    script = Path(sys.executable).parent / "kubegate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubegate.cli"]


def run_kubegate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kubegate_command(), *argv], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


# --------------------------------------------------------------------------------------------------------
# Schema: a strict walk of a document against lightkube-models' types (generated from the Kubernetes
# OpenAPI). lightkube itself ignores unknown keys when decoding, so a misspelt `readinesProbe` would pass
# silently there; here it is an error with its field path.


def schema_errors(value: object, kind: schema.Type, path: str) -> list[str]:
    if isinstance(kind, schema.UnionType):
        options = [t for t in kind.types if not isinstance(t, schema.NoneType)]
        if value is None and len(options) < len(kind.types):
            return []
        attempts = [schema_errors(value, option, path) for option in options]
        if any(not errors for errors in attempts):
            return []
        # report against the structured alternative if any: its errors name the deeper field
        structured = [e for o, e in zip(options, attempts, strict=True) if isinstance(o, schema.StructType)]
        return structured[0] if structured else attempts[0]
    if isinstance(kind, schema.StructType):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        known = {f.encode_name: f for f in kind.fields}
        errors = [f"{path}.{key}: unknown field" for key in value if key not in known]
        errors += [
            f"{path}.{f.encode_name}: required"
            for f in kind.fields
            if f.required and f.encode_name not in value
        ]
        for key, item in value.items():
            if key in known:
                errors += schema_errors(item, known[key].type, f"{path}.{key}")
        return errors
    if isinstance(kind, schema.ListType):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [
            e for i, item in enumerate(value) for e in schema_errors(item, kind.item_type, f"{path}[{i}]")
        ]
    if isinstance(kind, schema.DictType):
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {type(value).__name__}"]
        return [e for k, item in value.items() for e in schema_errors(item, kind.value_type, f"{path}.{k}")]
    expected: dict[type[schema.Type], tuple[type, ...]] = {
        schema.StrType: (str,),
        schema.IntType: (int,),
        schema.FloatType: (int, float),
        schema.BoolType: (bool,),
    }
    for schema_kind, python_types in expected.items():
        if isinstance(kind, schema_kind):
            wrong = not isinstance(value, python_types) or (
                schema_kind is not schema.BoolType and isinstance(value, bool)
            )
            return [f"{path}: expected {schema_kind.__name__[:-4].lower()}, got {value!r}"] if wrong else []
    return []  # Any, datetimes and the like: accepted as the API server would coerce them


def document_schema_errors(doc: Obj) -> list[str]:
    where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    try:
        cls = resource_registry.load(doc["apiVersion"], doc["kind"])
    except (KeyError, ValueError, AttributeError) as error:
        return [f"{where}: unknown apiVersion/kind: {error}"]
    if cls is None:
        return [f"{where}: unknown apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')}"]
    return schema_errors(doc, schema.type_info(cls), where)


# --------------------------------------------------------------------------------------------------------
# The plain manifests


def test_manifests_pass_kubegate_check_with_only_non_traffic_kinds_skipped() -> None:
    result = run_kubegate("check", "-o", "json", str(MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == 0 and report["warnings"] == 0, report["problems"]
    # the two objects kubegate itself reads: its IngressClass and the gateway's LoadBalancer Service
    assert report["objects"] == 2
    skipped = {s["kind"] for s in report["skipped"]}
    assert skipped <= NOT_TRAFFIC_KINDS, skipped - NOT_TRAFFIC_KINDS


def test_every_manifest_document_matches_the_kubernetes_schema() -> None:
    docs = manifest_documents()
    assert docs
    errors = [e for doc in docs for e in document_schema_errors(doc)]
    assert errors == []


def test_schema_walk_catches_the_mistakes_it_is_for() -> None:
    deployment = find(manifest_documents(), "Deployment", "kubegate")
    broken = json.loads(json.dumps(deployment))
    gateway = broken["spec"]["template"]["spec"]["containers"][0]
    gateway["readinesProbe"] = gateway.pop("readinessProbe")
    gateway["ports"][0]["containerPort"] = "8080"
    del broken["spec"]["selector"]
    errors = document_schema_errors(broken)
    assert "Deployment kubegate.spec.template.spec.containers[0].readinesProbe: unknown field" in errors
    assert any(
        e.startswith("Deployment kubegate.spec.template.spec.containers[0].ports[0].containerPort:")
        for e in errors
    )
    assert "Deployment kubegate.spec.selector: required" in errors


def test_every_namespaced_object_is_in_the_kubegate_namespace_and_the_namespace_comes_first() -> None:
    docs = manifest_documents()
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == NAMESPACE
    namespaced = 0
    for doc in docs:
        cls = resource_registry.load(doc["apiVersion"], doc["kind"])
        assert cls is not None
        if issubclass(cls, NamespacedResource):
            namespaced += 1
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]
        else:
            assert "namespace" not in doc["metadata"], doc["metadata"]
    assert namespaced >= 8


def test_ingress_class_names_the_controller_the_gateway_claims() -> None:
    docs = manifest_documents()
    ingress_class = find(docs, "IngressClass", "kubegate")
    assert ingress_class["spec"]["controller"] == "kubegate.io/ingress-controller"
    args = flag_values(container(find(docs, "Deployment", "kubegate"))["args"])
    assert args["--controller-name"] == ingress_class["spec"]["controller"]


def test_gateway_deployment_probes_the_admin_port_it_opens_to_the_pod_network() -> None:
    deployment = find(manifest_documents(), "Deployment", "kubegate")
    assert deployment["spec"]["replicas"] == 2
    gateway = container(deployment)
    assert gateway["args"][0] == "serve"
    args = flag_values(gateway["args"])
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    # the admin listener defaults to localhost, which the kubelet's probes cannot reach
    assert args["--admin-listen"] == f"0.0.0.0:{ports['admin']}"
    assert args["--listen"] == f"0.0.0.0:{ports['http']}"
    assert args["--tls-listen"] == f"0.0.0.0:{ports['https']}"
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # the kernel (node agent) owns nodePorts; userspace listeners in the pod would only shadow them
    assert args["--node-address"] == "off"
    assert args["--publish-service"] == f"{NAMESPACE}/kubegate"
    assert args["--leader-election-namespace"] == NAMESPACE
    assert {"cpu", "memory"} <= set(gateway["resources"]["requests"])
    assert "memory" in gateway["resources"]["limits"]


def test_gateway_runs_unprivileged_on_a_read_only_root() -> None:
    deployment = find(manifest_documents(), "Deployment", "kubegate")
    pod = deployment["spec"]["template"]["spec"]
    gateway = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    context = gateway["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    # ports are above 1024 by default, so no unprivileged-port sysctl either
    assert min(p["containerPort"] for p in gateway["ports"]) >= 1024
    assert "sysctls" not in pod["securityContext"]
    # the only writable paths are volumes
    mounts = {m["mountPath"] for m in gateway["volumeMounts"] if not m.get("readOnly")}
    assert mounts == {"/tmp"}


def test_load_balancer_service_maps_80_and_443_to_the_gateway_ports() -> None:
    docs = manifest_documents()
    service = find(docs, "Service", "kubegate")
    deployment = find(docs, "Deployment", "kubegate")
    assert service["spec"]["type"] == "LoadBalancer"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    mapped = {p["port"]: ports[p["targetPort"]] for p in service["spec"]["ports"]}
    assert mapped == {80: 8080, 443: 8443}


def test_node_agent_daemonset_has_host_network_and_only_the_capabilities_nft_needs() -> None:
    daemonset = find(manifest_documents(), "DaemonSet", "kubegate-node-agent")
    pod = daemonset["spec"]["template"]["spec"]
    agent = container(daemonset)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert agent["args"][:2] == ["proxy", "--mode=nftables"]
    assert "--kubernetes" in agent["args"]
    # the node's name reaches --node-name through the downward API
    assert flag_values(agent["args"])["--node-name"] == "$(NODE_NAME)"
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    context = agent["securityContext"]
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    # no probes: `kubegate proxy` has no admin listener to probe
    assert "--admin-listen" not in {a.partition("=")[0] for a in agent["args"]}


def test_pools_config_map_is_a_pool_file_kubegate_reads_at_the_path_the_flag_names(tmp_path: Path) -> None:
    docs = manifest_documents()
    config_map = find(docs, "ConfigMap", "kubegate-pools")
    pools_file = tmp_path / "pools.yaml"
    pools_file.write_text(config_map["data"]["pools.yaml"], encoding="utf-8")
    pools = load_pools(pools_file)
    assert [(p.name, p.addresses, p.auto_assign) for p in pools] == [("default", ("192.0.2.0/28",), True)]
    for kind, name in (("Deployment", "kubegate"), ("DaemonSet", "kubegate-node-agent")):
        workload = find(docs, kind, name)
        flag = Path(flag_values(container(workload)["args"])["--pools"])
        mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert mounts["pools"] == str(flag.parent), kind
        assert volumes["pools"]["configMap"]["name"] == "kubegate-pools"
        assert flag.name in config_map["data"]
    # and kubegate accepts the manifests together with those pools
    result = run_kubegate("check", "--pools", str(pools_file), str(MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def known_flags(command: str) -> set[str]:
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.choices and command in a.choices)
    assert isinstance(subparsers.choices, dict)
    sub = subparsers.choices[command]
    return {option for action in sub._actions for option in action.option_strings}


@pytest.mark.parametrize(("kind", "name"), [("Deployment", "kubegate"), ("DaemonSet", "kubegate-node-agent")])
def test_every_flag_in_the_manifests_is_one_the_command_line_accepts(kind: str, name: str) -> None:
    args: list[str] = container(find(manifest_documents(), kind, name))["args"]
    command, options = args[0], args[1:]
    known = known_flags(command)
    unknown = [a for a in options if a.partition("=")[0] not in known | PENDING_FLAGS]
    assert unknown == []
    # what the parser knows today must also parse: values of the right form, choices that exist
    parseable = [a for a in options if a.partition("=")[0] in known]
    # with --kubernetes a command may take no PATH; give it one only when the parser insists
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = _parser().parse_args([command, *parseable])
    except SystemExit:
        parsed = _parser().parse_args([command, *parseable, str(MANIFESTS)])
    assert parsed.command == command


# --------------------------------------------------------------------------------------------------------
# RBAC


def bound_grants(docs: list[Obj], service_account: str) -> Grants:
    """Every (scope, group, resource) -> verbs granted to a ServiceAccount through the bindings."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    grants: dict[tuple[str, str, str], set[str]] = {}
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subjects = binding.get("subjects", [])
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == service_account and s["namespace"] == NAMESPACE
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else namespace, ref["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else namespace
        for rule in role["rules"]:
            assert "resourceNames" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((scope, group, resource), set()).update(rule["verbs"])
    return {key: frozenset(verbs) for key, verbs in grants.items()}


@pytest.mark.parametrize(
    ("kind", "name", "needs"),
    [("Deployment", "kubegate", GATEWAY_NEEDS), ("DaemonSet", "kubegate-node-agent", NODE_AGENT_NEEDS)],
)
def test_rbac_grants_exactly_what_the_code_needs(kind: str, name: str, needs: Grants) -> None:
    docs = manifest_documents()
    service_account = find(docs, kind, name)["spec"]["template"]["spec"]["serviceAccountName"]
    find(docs, "ServiceAccount", service_account)
    grants = bound_grants(docs, service_account)
    assert grants == needs
    assert not any("*" in key or "*" in verbs for key, verbs in grants.items())


def test_gateway_rbac_covers_every_resource_the_informers_watch() -> None:
    # the cross-check with the code: a resource added to the informers without RBAC fails here
    grants = bound_grants(manifest_documents(), "kubegate")
    for resource in RESOURCES:
        group = resource.api_version.rpartition("/")[0]
        assert {"list", "watch"} <= grants.get(("cluster", group, resource.plural), frozenset()), resource


# --------------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        yield keyword.upper(), rest.strip()
    assert not pending, "Dockerfile ends inside a continued instruction"


def dockerfile_stages() -> tuple[list[tuple[str, str]], list[Stage]]:
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            stages.append(Stage(name=match.group(2), base=match.group(1)))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        else:
            preamble.append((keyword, rest))
    return preamble, stages


def global_args() -> dict[str, str]:
    preamble, _ = dockerfile_stages()
    assert all(keyword == "ARG" for keyword, _ in preamble)
    return dict(rest.partition("=")[::2] for _, rest in preamble)


def dockerfile_uid() -> int:
    return int(global_args()["KUBEGATE_UID"])


def stage_map() -> dict[str, Stage]:
    return {stage.name: stage for stage in dockerfile_stages()[1]}


def dockerignore_allows(relative: str) -> bool:
    """Docker's rule: the last pattern that matches a path decides; ``!`` re-includes."""
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")
    allowed = True
    for line in ignore.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern.replace("**/", "*/")) for prefix in prefixes):
            allowed = negate
    return allowed


def test_every_copy_source_exists_in_the_build_context_and_is_not_ignored() -> None:
    stages = stage_map()
    copies = 0
    for stage in stages.values():
        for keyword, rest in stage.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            assert keyword == "COPY", "ADD fetches and unpacks; the Dockerfile uses COPY only"
            words = rest.split()
            source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources
            if source_stage is not None:
                assert source_stage in stages, f"COPY --from={source_stage}: no such stage"
                continue
            for source in sources:
                copies += 1
                assert (ROOT / source).exists(), f"{stage.name}: COPY {source}: not in the repository"
                assert dockerignore_allows(source.rstrip("/")), f"COPY {source}: excluded by the dockerignore"
    assert copies >= 4
    # and what must not be sent is not
    assert not dockerignore_allows(".venv")
    assert not dockerignore_allows("tests/unit/test_deploy.py")


def test_the_install_uses_the_pinned_versions_of_constraints_txt() -> None:
    build = stage_map()["build"]
    copied = " ".join(rest for keyword, rest in build.instructions if keyword == "COPY")
    assert "constraints.txt" in copied.split()
    installs = [rest for keyword, rest in build.instructions if keyword == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    assert re.search(r"pip install (--constraint|-c) constraints\.txt \.(\s|$)", installs[0]), installs[0]
    # the pins cover every runtime dependency the package declares
    pins = {
        re.split(r"[=<>]", line, maxsplit=1)[0].strip().lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    with (ROOT / "pyproject.toml").open("rb") as handle:
        import tomllib  # noqa: PLC0415

        project = tomllib.load(handle)["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\s;<>=\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"


def test_stages_run_as_the_unprivileged_user_with_kubegate_as_entrypoint() -> None:
    stages = stage_map()
    python = global_args()["PYTHON_IMAGE"]
    assert python == "python:3.11-slim-bookworm"
    assert stages["build"].base == stages["gateway"].base == "${PYTHON_IMAGE}"
    gateway = stages["gateway"]
    assert ("ENTRYPOINT", '["kubegate"]') in gateway.instructions
    for name in ("gateway", "node-agent", "loadbalancer", "full"):
        stage = stages[name]
        assert name == "gateway" or stage.base == "gateway", f"{name} must build on the gateway stage"
        users = [rest for keyword, rest in stage.instructions if keyword == "USER"]
        assert users and users[-1] == "${KUBEGATE_UID}:${KUBEGATE_UID}", f"{name} ends as {users[-1:]}"
    # the uid the manifests run as exists in the image
    assert re.search(r"useradd .*--uid \"\$\{KUBEGATE_UID\}\"", " ".join(r for _, r in gateway.instructions))


def test_every_variable_a_stage_uses_is_declared_in_that_stage() -> None:
    # a global ARG is empty inside a stage unless the stage declares it again: `USER :` would fail late
    inherited_env = {"PATH"}
    for stage in stage_map().values():
        declared: set[str] = set()
        for keyword, rest in stage.instructions:
            if keyword in ("RUN",):
                continue  # the shell expands those at build time from ENV and ARG alike
            for variable in re.findall(r"\$\{(\w+)\}", rest):
                assert variable in declared | inherited_env, f"{stage.name}: {keyword} {rest}: ${variable}"
            if keyword == "ARG":
                declared.add(rest.partition("=")[0])
            if keyword == "ENV":
                declared.update(re.findall(r"(\w+)=", rest))


def apt_packages(stage: Stage) -> set[str]:
    packages: set[str] = set()
    for keyword, rest in stage.instructions:
        if keyword == "RUN" and "apt-get install" in rest:
            install = rest.split("apt-get install", 1)[1].split("&&", 1)[0]
            packages.update(w for w in install.split() if not w.startswith("-"))
    return packages


def test_each_mode_image_has_the_tool_it_runs_and_the_gateway_has_none() -> None:
    stages = stage_map()
    assert apt_packages(stages["gateway"]) == set()
    assert apt_packages(stages["node-agent"]) == {"nftables"}
    assert apt_packages(stages["loadbalancer"]) == {"haproxy"}
    assert apt_packages(stages["full"]) == {"nftables", "haproxy"}


def test_the_manifests_images_are_the_targets_their_commands_need() -> None:
    # the Dockerfile's header documents which tag is built from which target
    built = {
        tag: target
        for target, tag in re.findall(r"--target (\S+)\s+-t (\S+)", DOCKERFILE.read_text(encoding="utf-8"))
    }
    docs = manifest_documents()
    tools = {"serve": set(), "proxy": {"nftables"}}
    for kind, name in (("Deployment", "kubegate"), ("DaemonSet", "kubegate-node-agent")):
        workload = container(find(docs, kind, name))
        target = built.get(workload["image"])
        assert target is not None, (
            f"{kind} {name}: image {workload['image']} is not built by deploy/Dockerfile"
        )
        assert apt_packages(stage_map()[target]) == tools[workload["args"][0]]


# --------------------------------------------------------------------------------------------------------
# kubectl: even `--dry-run=client` asks the API server's discovery which kinds exist and whether they are
# namespaced, and `apply` GETs each object to diff against. So the test serves discovery built from
# lightkube-models' resource table on loopback, answering 404 for every object: an empty cluster.


def discovery_documents() -> dict[str, Obj]:
    lists: dict[str, Obj] = {}
    groups: dict[str, set[str]] = {}
    for module_info in pkgutil.iter_modules(lightkube.resources.__path__):
        module = importlib.import_module(f"lightkube.resources.{module_info.name}")
        for candidate in vars(module).values():
            if not (isinstance(candidate, type) and issubclass(candidate, Resource)):
                continue
            info = getattr(candidate, "_api_info", None)
            if info is None or info.parent is not None or info.action:
                continue  # subresources (status, scale) are not listed as kinds
            group, version = info.resource.group, info.resource.version
            group_version = f"{group}/{version}" if group else version
            listing = lists.setdefault(
                group_version,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": group_version,
                    "resources": [],
                },
            )
            if any(r["name"] == info.plural for r in listing["resources"]):
                continue
            listing["resources"].append(
                {
                    "name": info.plural,
                    "singularName": "",
                    "namespaced": issubclass(candidate, NamespacedResource),
                    "kind": info.resource.kind,
                    "verbs": ["get", "list", "create", "update", "patch"],
                }
            )
            if group:
                groups.setdefault(group, set()).add(version)
    documents = {f"/api/{v}" if "/" not in v else f"/apis/{v}": listing for v, listing in lists.items()}
    documents["/api"] = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    documents["/apis"] = {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in sorted(versions)],
                "preferredVersion": {"groupVersion": f"{group}/{max(versions)}", "version": max(versions)},
            }
            for group, versions in sorted(groups.items())
        ],
    }
    return documents


@dataclass
class EmptyCluster:
    url: str
    requested: list[str]


@pytest.fixture
def empty_cluster() -> Iterator[EmptyCluster]:
    documents = discovery_documents()
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            requested.append(path)
            body = documents.get(path)
            status = 200 if body is not None else 404
            if body is None:
                body = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                }
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield EmptyCluster(url=f"http://127.0.0.1:{server.server_address[1]}", requested=requested)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def kubectl(cluster: EmptyCluster, home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not installed (Debian package kubernetes-client)")
    return subprocess.run(
        [binary, f"--server={cluster.url}", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        # a fresh HOME: no user kubeconfig, and kubectl's discovery cache starts empty
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
    )


def test_kubectl_applies_the_manifest_directory_to_an_empty_cluster(
    empty_cluster: EmptyCluster, tmp_path: Path
) -> None:
    result = kubectl(
        empty_cluster,
        tmp_path,
        "apply",
        "--dry-run=client",
        "--validate=false",
        "-o",
        "name",
        "-f",
        "deploy/manifests/",
    )
    assert result.returncode == 0, result.stderr
    expected = [
        f"{d['kind'].lower()}{'' if '/' not in d['apiVersion'] else '.' + d['apiVersion'].split('/')[0]}/"
        f"{d['metadata']['name']}"
        for d in manifest_documents()
    ]
    assert result.stdout.split() == expected
    # apply looked each object up first, at the path its scope implies
    assert "/apis/apps/v1/namespaces/kubegate/deployments/kubegate" in empty_cluster.requested
    assert "/apis/networking.k8s.io/v1/ingressclasses/kubegate" in empty_cluster.requested


def test_kubectl_rejects_a_kind_the_cluster_does_not_serve(
    empty_cluster: EmptyCluster, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (MANIFESTS / "kubegate.yaml")
        .read_text(encoding="utf-8")
        .replace("kind: DaemonSet", "kind: DaemonSett"),
        encoding="utf-8",
    )
    result = kubectl(
        empty_cluster, tmp_path, "apply", "--dry-run=client", "--validate=false", "-f", str(broken)
    )
    assert result.returncode != 0
    assert 'no matches for kind "DaemonSett" in version "apps/v1"' in result.stderr


# --------------------------------------------------------------------------------------------------------
# Helm chart (helm itself, installed by deploy/tools/install-helm)


def helm_binary() -> str:
    candidates = [
        os.environ.get("HELM", ""),
        str(ROOT / ".venv" / "bin" / "helm"),
        shutil.which("helm") or "",
    ]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        pytest.skip("helm is not installed: run deploy/tools/install-helm")
    return found


def helm(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "HELM_CACHE_HOME": "/tmp/kubegate-helm/cache",
            "HELM_CONFIG_HOME": "/tmp/kubegate-helm/config",
            "HELM_DATA_HOME": "/tmp/kubegate-helm/data",
        },
    )


def helm_template(*settings: str) -> subprocess.CompletedProcess[str]:
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return helm("template", "kubegate", str(CHART), "--namespace", NAMESPACE, *sets)


def test_helm_lint_passes_strictly() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_plain_manifests_are_the_chart_rendered_with_its_defaults() -> None:
    result = helm_template("namespace.create=true")
    assert result.returncode == 0, result.stderr
    committed = (MANIFESTS / "kubegate.yaml").read_text(encoding="utf-8")
    header, _, body = committed.partition("\n---\n")
    assert header.startswith("# Generated by deploy/tools/render-manifests")
    assert "---\n" + body == result.stdout, "deploy/manifests is stale: run deploy/tools/render-manifests"


def check_rendered(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(text, encoding="utf-8")
    return run_kubegate("check", str(rendered))


def test_chart_without_node_agent_drops_its_daemonset_and_rbac(tmp_path: Path) -> None:
    result = helm_template("nodeAgent.enabled=false")
    assert result.returncode == 0, result.stderr
    docs = load_documents(result.stdout)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert not any("node-agent" in name for _, name in names)
    assert ("Deployment", "kubegate") in names
    # without namespace.create the release namespace is helm's to create
    assert "Namespace" not in {kind for kind, _ in names}
    assert check_rendered(tmp_path, result.stdout).returncode == 0


def test_chart_with_low_ports_lets_the_non_root_gateway_bind_them(tmp_path: Path) -> None:
    result = helm_template("gateway.httpPort=80", "gateway.httpsPort=443")
    assert result.returncode == 0, result.stderr
    docs = load_documents(result.stdout)
    deployment = find(docs, "Deployment", "kubegate")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}
    ]
    args = flag_values(container(deployment)["args"])
    assert args["--listen"] == "0.0.0.0:80" and args["--tls-listen"] == "0.0.0.0:443"
    assert [e for d in docs for e in document_schema_errors(d)] == []
    assert check_rendered(tmp_path, result.stdout).returncode == 0


def test_chart_without_pools_renders_no_config_map_and_no_pools_flag(tmp_path: Path) -> None:
    result = helm_template("pools=null")
    assert result.returncode == 0, result.stderr
    docs = load_documents(result.stdout)
    assert "ConfigMap" not in {d["kind"] for d in docs}
    for kind, name in (("Deployment", "kubegate"), ("DaemonSet", "kubegate-node-agent")):
        workload = find(docs, kind, name)
        assert "--pools" not in flag_values(container(workload)["args"])
        assert "pools" not in {v["name"] for v in workload["spec"]["template"]["spec"]["volumes"]}


def test_chart_pool_values_reach_kubegate_which_rejects_a_misspelt_field(tmp_path: Path) -> None:
    result = helm_template(
        "pools[0].name=public",
        "pools[0].addresses={198.51.100.0/29,203.0.113.7}",
        "pools[0].namespaces={web}",
        "pools[0].autoAsign=false",
    )
    assert result.returncode == 0, result.stderr
    config_map = find(load_documents(result.stdout), "ConfigMap", "kubegate-pools")
    pools_file = tmp_path / "pools.yaml"
    pools_file.write_text(config_map["data"]["pools.yaml"], encoding="utf-8")
    checked = run_kubegate("check", "--pools", str(pools_file), str(MANIFESTS))
    assert checked.returncode == 2
    assert "pool public: spec.autoAsign is not a field of AddressPool" in checked.stderr


def test_chart_refuses_a_node_agent_mode_kubegate_does_not_have() -> None:
    result = helm_template("nodeAgent.mode=ipvs")
    assert result.returncode != 0
    assert 'nodeAgent.mode "ipvs": kubegate proxy supports only nftables' in result.stderr
