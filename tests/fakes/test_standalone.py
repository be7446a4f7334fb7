"""``python -m tests.fakes.apiserver``: the fake on its own, seeded from manifests, for use by hand."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import yaml

from tests.fakes.client import call

ROOT = Path(__file__).resolve().parents[2]


def test_standalone_server_serves_seeded_objects_and_writes_a_kubeconfig(tmp_path: Path) -> None:
    manifest = tmp_path / "objects.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: seeded}\ndata: {a: '1'}\n---\n"
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: kubegate}\n"
        "spec: {controller: kubegate.io/ingress-controller}\n"
    )
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.apiserver", "--kubeconfig", str(kubeconfig), "-f", str(manifest)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = threading.Timer(20, process.kill)  # a server that never prints ends the read below
    deadline.start()
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("fake API server at http://127.0.0.1:"), banner
        url = banner.split()[4].rstrip(";")
        code, seeded = call(url, "GET", "/api/v1/namespaces/default/configmaps/seeded")
        assert code == 200 and seeded["data"] == {"a": "1"}
        code, _ = call(url, "GET", "/apis/networking.k8s.io/v1/ingressclasses/kubegate")
        assert code == 200
        config = yaml.safe_load(kubeconfig.read_text())
        assert config["clusters"][0]["cluster"]["server"] == url
    finally:
        deadline.cancel()
        process.terminate()
        process.wait(timeout=10)


def test_standalone_server_reports_a_bad_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tests.fakes.apiserver", "-f", str(manifest)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "does not serve Widget in example.com/v1" in result.stderr and "Traceback" not in result.stderr
