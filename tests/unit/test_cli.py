"""The CLI on the bundled examples and on broken manifests, as a user runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubegate.cli import _parser, main
from kubegate.runners import _proxy_settings

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", EXAMPLES)
    assert code == 0
    assert re.search(r"^\d+ objects, 0 errors", out, re.MULTILINE)


def test_check_reports_each_bad_object_with_file_line_and_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "web.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\n"
        "kind: Ingress\n"
        "metadata:\n"
        "  name: web\n"
        "spec:\n"
        "  rules:\n"
        "    - host: foo.com\n"
        "      http:\n"
        "        paths:\n"
        "          - path: /b\n"
        "            backend:\n"
        "              service: {name: s, port: {number: 80}}\n"
        "---\n"
        "apiVersion: v1\n"
        "kind: Service\n"
        "metadata: {name: good}\n"
        "spec: {ports: [{port: 80}]}\n"
    )
    code, out, _ = run(capsys, "check", str(tmp_path))
    assert code == 1
    path = tmp_path / "web.yaml"
    assert f"{path}:10 Ingress default/web spec.rules[0].http.paths[0].pathType: required" in out
    # the good Service is still loaded
    assert "1 objects, 1 errors" in out

    code, out, _ = run(capsys, "check", "-o", "json", str(tmp_path))
    report = json.loads(out)
    assert code == 1
    assert report["errors"] == 1
    problem = report["problems"][0]
    assert problem["object"] == {"kind": "Ingress", "namespace": "default", "name": "web"}
    assert problem["line"] == 10


def test_get_svc_uses_kubectl_columns_and_shows_allocations(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "get", "svc", EXAMPLES)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["web"][1] == "NodePort"
    assert re.fullmatch(r"8086:3\d{4}/TCP", rows["web"][4])
    assert rows["shop"][1] == "LoadBalancer"
    assert rows["shop"][3].startswith("127.0.100.")
    assert rows["s1"][3] == "<none>"
    assert rows["s1"][2].startswith("10.9")


def test_get_ep_lists_the_endpoints_kubegate_computed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "get", "ep", EXAMPLES)
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows["s1"] == "127.0.0.1:9001"
    # named targetPort "http" resolved from the pod's containerPorts
    assert rows["web"] == "127.0.0.1:9003"


def test_get_in_other_namespace_finds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "get", "ing", "-n", "elsewhere", EXAMPLES)
    assert code == 0
    assert out == ""
    assert "No resources found in elsewhere namespace." in err


def test_routes_lists_paths_in_match_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "routes", EXAMPLES)
    assert code == 0
    foo = [line.split() for line in out.splitlines() if line.startswith("foo.bar.com")]
    assert [row[1] for row in foo] == ["/bar", "/foo"]
    assert {row[3] for row in foo} == {"default/s1:80", "default/s2:80"}


def test_translate_outputs_yaml_and_json_of_the_same_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, yaml_out, _ = run(capsys, "translate", EXAMPLES)
    assert code == 0
    assert "foo.bar.com" in yaml_out
    code, json_out, _ = run(capsys, "translate", "-o", "json", EXAMPLES)
    model = json.loads(json_out)
    hosts = [vhost["host"] for vhost in model["routing"]["virtual_hosts"]]
    assert hosts == ["foo.bar.com"]


def test_state_file_keeps_allocations_across_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "a.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: NodePort, ports: [{port: 80}]}\n"
    )
    _, first, _ = run(capsys, "get", "svc", "--state", str(state), str(manifests))
    assert state.exists()
    # a Service added later must not take a's addresses, even though it sorts first
    (manifests / "0.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: '0a'}\nspec: {type: NodePort, ports: [{port: 80}]}\n"
    )
    _, second, _ = run(capsys, "get", "svc", "--state", str(state), str(manifests))
    row_a_first = next(line for line in first.splitlines() if line.startswith("a "))
    row_a_second = next(line for line in second.splitlines() if line.startswith("a "))
    assert row_a_first == row_a_second


def test_bad_settings_exit_2_with_the_flag_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check", "--node-port-range", "3-x", EXAMPLES)
    assert code == 2
    assert "--node-port-range" in err
    code, _, err = run(capsys, "check", "--pool", "not-an-address", EXAMPLES)
    assert code == 2
    assert "--pool" in err


def test_corrupt_state_file_is_an_error_not_a_reset(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    code, _, err = run(capsys, "check", "--state", str(state), EXAMPLES)
    assert code == 2
    assert str(state) in err
    assert state.read_text() == "{not json"


def test_the_readme_bad_example_reports_what_the_readme_says(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    code, out, _ = run(capsys, "check", str(root / "docs" / "bad-example"))
    assert code == 1
    readme = (root / "README.md").read_text()
    for line in out.splitlines():
        shown = line.replace(str(root / "docs"), "docs")
        assert shown in readme, f"README does not show: {shown}"


def test_render_nftables_and_haproxy_from_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, nft, _ = run(capsys, "render", "nftables", "--node-name", "n1", EXAMPLES)
    assert code == 0
    assert "table inet kubegate" in nft
    # the ClusterIP kubegate allocated for s1 is in the service map
    _, svc, _ = run(capsys, "get", "svc", EXAMPLES)
    s1_ip = next(line.split()[2] for line in svc.splitlines() if line.startswith("s1 "))
    assert s1_ip in nft
    code, cfg, _ = run(capsys, "render", "haproxy", "--node-address", "n1=192.0.2.10", EXAMPLES)
    assert code == 0
    assert "bind 127.0.100.1:80" in cfg
    assert re.search(r"server n1 192\.0\.2\.10:3\d{4} check", cfg)


def test_render_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "render", "nftables", "--table", "bad name!", EXAMPLES)
    assert code == 2
    assert "table" in err


def test_loadbalancer_health_check_flags_are_checked_before_haproxy_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["loadbalancer", str(tmp_path), "--node-address", "n1=192.0.2.1", "--check-fall", "0"])
    assert code == 2
    assert "check_fall: 0 is not a positive integer" in capsys.readouterr().err


def test_serve_rejects_a_zero_client_body_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path), "--client-body-timeout", "0"]) == 2
    assert "--client-body-timeout 0.0: must be more than 0 seconds" in capsys.readouterr().err


def test_serve_hsts_flag_reaches_the_proxy_settings() -> None:
    default = _proxy_settings(_parser().parse_args(["serve", "x"]))
    assert default.hsts == "max-age=31536000; includeSubDomains"
    assert _proxy_settings(_parser().parse_args(["serve", "x", "--hsts", "off"])).hsts == ""
    preload = _proxy_settings(_parser().parse_args(["serve", "x", "--hsts", "max-age=63072000; preload"]))
    assert preload.hsts == "max-age=63072000; preload"
