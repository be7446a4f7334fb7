"""load_paths: files, directories, stdin, multi-document YAML, Lists, and problems a user can act on."""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

import pytest

from kubegate.objects.kinds import EndpointSlice, Service
from kubegate.objects.meta import ObjectKey, Origin
from kubegate.sources.files import LoadResult, line_of, load_paths

DATA = Path(__file__).parent / "data"


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def messages(result: LoadResult) -> list[str]:
    return [str(problem) for problem in result.problems]


def keys(result: LoadResult) -> list[str]:
    return [f"{o.obj.kind} {o.obj.metadata.namespace}/{o.obj.metadata.name}" for o in result.objects]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_directory_loads_recursively_sorted_skipping_hidden_and_other_files() -> None:
    result = load_paths([str(DATA / "good")])
    assert messages(result) == []
    assert keys(result) == [
        "IngressClass /kubegate",
        "Secret default/web-tls",
        "Service default/web",
        "Pod default/web-1",
        "Ingress default/web",
        "EndpointSlice default/web-abc12",
        "Endpoints default/web",
    ]
    origins = {o.obj.kind: o.origin for o in result.objects}
    web = str(DATA / "good" / "web.yaml")
    # documents are counted from 0, the empty one included; lines are 1-based, of the object's first key
    assert origins["Service"] == Origin(web, 0, 2)
    assert origins["Pod"] == Origin(web, 1, 24)
    assert origins["Ingress"] == Origin(web, 3, 47)
    assert origins["Secret"].line == 14  # an item of a JSON List
    [skipped] = result.skipped
    assert (skipped.kind, skipped.api_version, skipped.name, skipped.origin.document) == (
        "Deployment",
        "apps/v1",
        "web",
        2,
    )


def test_snapshot_holds_loaded_objects_and_ingress_class_is_cluster_scoped() -> None:
    snapshot = load_paths([str(DATA / "good")]).snapshot()
    assert set(snapshot.ingress_classes) == {"kubegate"}
    assert snapshot.ingress_classes["kubegate"].is_default
    assert set(snapshot.services) == {("default", "web")}
    assert isinstance(snapshot.endpoint_slices[("default", "web-abc12")], EndpointSlice)
    timestamps = [p.metadata.creation_timestamp for p in snapshot.pods.values()]
    assert timestamps == ["2024-01-01T00:00:00Z"]  # a string, not a datetime


def test_errors_name_file_line_object_and_field() -> None:
    bad = DATA / "bad"
    result = load_paths([str(bad)])
    assert messages(result) == [
        f"{bad}/broken.yaml:7: invalid YAML: while parsing a flow node: did not find expected node content (column 1)",  # noqa: E501 (whole messages read better)
        f"{bad}/web.yaml:22 Ingress default/web spec.rules[0].http.paths[1].pathType: required in networking.k8s.io/v1",  # noqa: E501 (whole messages read better)
        f"{bad}/web.yaml:26 Service default/web: defined twice: also defined at {bad}/web.yaml:1; "
        "this definition is ignored",
    ]
    # the first definition is kept; the bad Ingress is left out; the broken file does not stop the others
    assert keys(result) == ["Service default/web"]
    [service] = result.objects
    assert isinstance(service.obj, Service)
    assert service.obj.spec.ports[0].port == 80


def test_relative_paths_stay_relative_and_the_line_is_the_fields_own(in_tmp: Path) -> None:
    write(
        in_tmp,
        "examples/web.yaml",
        """
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: shop
        spec:
          ports:
          - name: http
            port: 80
          - name: http
            port: 70000
            protocol: HTTP
        """,
    )
    result = load_paths(["examples"])
    assert messages(result) == [
        "examples/web.yaml:10 Service shop/web spec.ports[1].name: duplicate port name 'http' (also spec.ports[0])",  # noqa: E501 (whole messages read better)
        "examples/web.yaml:11 Service shop/web spec.ports[1].port: 70000 is not a valid port: must be between 1 and 65535",  # noqa: E501 (whole messages read better)
        "examples/web.yaml:12 Service shop/web spec.ports[1].protocol: 'HTTP' is not supported: must be one of TCP, UDP, SCTP",  # noqa: E501 (whole messages read better)
    ]
    assert result.objects == ()


def test_type_error_message_in_a_file(in_tmp: Path) -> None:
    write(
        in_tmp,
        "svc.yaml",
        """
        ---
        # first document is empty
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
          - port: eighty
        """,
    )
    assert messages(load_paths(["svc.yaml"])) == [
        'svc.yaml:9 Service default/web spec.ports[0].port: expected an integer, got a string "eighty"'
    ]


def test_stdin_with_multiple_documents(in_tmp: Path) -> None:
    text = textwrap.dedent(
        """
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b, namespace: Bad}
        spec: {ports: [{port: 80}]}
        """
    ).lstrip()
    result = load_paths(["-"], stdin=io.StringIO(text))
    assert keys(result) == ["Service default/a"]
    assert result.objects[0].origin == Origin("<stdin>", 0, 1)
    [problem] = result.problems
    assert str(problem).startswith(
        "<stdin>:8 Service Bad/b metadata.namespace: 'Bad' is not a valid DNS-1123 label"
    )


def test_list_kinds_decode_items_one_by_one(in_tmp: Path) -> None:
    write(
        in_tmp,
        "list.yaml",
        """
        apiVersion: v1
        kind: ServiceList
        items:
        - metadata: {name: a}
          spec: {ports: [{port: 80}]}
        - metadata: {name: b}
          spec:
            ports:
            - port: 0
        ---
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: Pod
          metadata: {name: p}
        - apiVersion: batch/v1
          kind: Job
          metadata: {name: j}
        """,
    )
    result = load_paths(["list.yaml"])
    assert keys(result) == ["Service default/a", "Pod default/p"]
    assert messages(result) == [
        "list.yaml:9 Service default/b items[1].spec.ports[0].port: 0 is not a valid port: must be between 1 and 65535"  # noqa: E501 (whole messages read better)
    ]
    assert [(s.kind, s.origin) for s in result.skipped] == [("Job", Origin("list.yaml", 1, 17))]
    assert result.objects[1].origin == Origin("list.yaml", 1, 14)


def test_list_items_must_be_a_list(in_tmp: Path) -> None:
    write(in_tmp, "l.yaml", "apiVersion: v1\nkind: List\nitems: {a: 1}\n")
    assert messages(load_paths(["l.yaml"])) == ["l.yaml:3 items: expected a list of objects"]


def test_unreadable_missing_and_non_utf8_files_are_problems_others_load(in_tmp: Path) -> None:
    write(in_tmp, "ok.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    (in_tmp / "latin1.yaml").write_bytes(b"apiVersion: v1\nkind: Secret\nmetadata: {name: \xe9}\n")
    result = load_paths(["missing.yaml", "latin1.yaml", "ok.yaml"])
    assert messages(result) == [
        "missing.yaml: cannot read: No such file or directory",
        "latin1.yaml: not UTF-8 text (byte 45)",
    ]
    assert keys(result) == ["Secret default/s"]


def test_documents_before_and_files_after_a_syntax_error_load(in_tmp: Path) -> None:
    write(in_tmp, "a.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: one}\n---\nkey: : : [\n")
    write(in_tmp, "b.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: two}\n")
    result = load_paths(["a.yaml", "b.yaml"])
    assert keys(result) == ["Secret default/one", "Secret default/two"]
    [problem] = result.problems
    assert str(problem).startswith("a.yaml:5: invalid YAML:")


def test_json_files_and_json_syntax_errors(in_tmp: Path) -> None:
    write(in_tmp, "s.json", '{"apiVersion": "v1", "kind": "Secret",\n\t"metadata": {"name": "s"}}')
    write(in_tmp, "bad.json", '{"apiVersion": "v1",\n "kind": }')
    result = load_paths(["s.json", "bad.json"])
    assert keys(result) == ["Secret default/s"]
    assert messages(result) == ["bad.json:2: invalid JSON: Expecting value (column 10)"]


def test_documents_that_are_not_objects(in_tmp: Path) -> None:
    write(in_tmp, "odd.yaml", "- just\n- a list\n---\nplain scalar\n---\nkind: Service\n")
    assert messages(load_paths(["odd.yaml"])) == [
        "odd.yaml:1: expected an object (a mapping with apiVersion and kind), got a list",
        'odd.yaml:4: expected an object (a mapping with apiVersion and kind), got a string "plain scalar"',
        "odd.yaml:6 Service (without a name) apiVersion: required",
    ]


def test_same_name_in_other_namespace_or_kind_is_no_duplicate(in_tmp: Path) -> None:
    write(
        in_tmp,
        "m.yaml",
        """
        apiVersion: v1
        kind: Secret
        metadata: {name: x}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: x, namespace: other}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: x}
        """,
    )
    result = load_paths(["m.yaml", "m.yaml"])
    assert keys(result) == ["Secret default/x", "Secret other/x", "Endpoints default/x"]
    assert len(result.problems) == 3
    assert all("also defined at m.yaml:" in p.message for p in result.problems)
    assert result.problems[0].object == ObjectKey("Secret", "default", "x")


def test_empty_directory_is_a_warning(in_tmp: Path) -> None:
    (in_tmp / "empty").mkdir()
    [problem] = load_paths(["empty"]).problems
    assert problem.severity == "warning"
    assert str(problem) == "empty: warning: no *.yaml, *.yml or *.json files here"


def test_line_of_finds_fields_for_translator_diagnostics(in_tmp: Path) -> None:
    write(
        in_tmp,
        "ing.yaml",
        """
        apiVersion: v1
        kind: List
        items:
        - apiVersion: networking.k8s.io/v1
          kind: Ingress
          metadata: {name: a}
          spec:
            defaultBackend:
              service: {name: web, port: {number: 80}}
            rules:
            - host: a.example.com
        """,
    )
    [loaded] = load_paths(["ing.yaml"]).objects
    assert loaded.origin == Origin("ing.yaml", 0, 4)
    assert line_of(loaded.origin, "spec.rules[0].host") == 11
    assert line_of(loaded.origin, "spec.defaultBackend.service") == 9
    assert line_of(loaded.origin, "spec.tls[0]") == 7  # missing: the nearest existing parent, spec
    assert line_of(Origin("gone.yaml", 0, 3), "spec") == 3

    result = load_paths(["-"], stdin=io.StringIO("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n"))
    assert line_of(result.objects[0].origin, "metadata.name") == 4


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_subdirectory_does_not_stop_the_rest(in_tmp: Path) -> None:
    write(in_tmp, "d/ok.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    locked = in_tmp / "d" / "locked"
    locked.mkdir()
    write(locked, "x.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: t}\n")
    locked.chmod(0)
    try:
        assert keys(load_paths(["d"])) == ["Secret default/s"]
    finally:
        locked.chmod(0o700)


def test_keys_given_twice_are_warned_about_and_the_last_one_counts(in_tmp: Path) -> None:
    write(
        in_tmp,
        "twice.yaml",
        """
        apiVersion: v1
        kind: Service
        metadata:
          name: a
        spec:
          ports: [{port: 80}]
        spec:
          type: ExternalName
          externalName: db.example.com
          type: NodePort
        """,
    )
    result = load_paths(["twice.yaml"])
    assert messages(result) == [
        "twice.yaml:7 warning: Service default/a spec: given twice (first at line 5); the last one is used",
        "twice.yaml:10 warning: Service default/a spec.type: given twice (first at line 8); the last one is used",  # noqa: E501 (whole messages read better)
        # the error points into the spec that counts, the last one, which has no ports
        "twice.yaml:7 Service default/a spec.ports: required: a Service needs at least one port"
        " (unless headless or ExternalName)",
    ]


def test_default_class_annotation_other_than_true_is_a_warning(in_tmp: Path) -> None:
    write(
        in_tmp,
        "class.yaml",
        """
        apiVersion: networking.k8s.io/v1
        kind: IngressClass
        metadata:
          name: kubegate
          annotations:
            ingressclass.kubernetes.io/is-default-class: "True"
        spec:
          controller: kubegate.dev/ingress
        """,
    )
    result = load_paths(["class.yaml"])
    assert messages(result) == [
        "class.yaml:6 warning: IngressClass kubegate metadata.annotations[ingressclass.kubernetes.io/is-default-class]:"  # noqa: E501 (whole messages read better)
        " 'True' does not mark the default class: only the exact value \"true\" does"
    ]
    assert keys(result) == ["IngressClass /kubegate"]  # loaded all the same
