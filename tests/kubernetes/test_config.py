"""Finding the API server: kubeconfig files, contexts, KUBECONFIG, the in-cluster service account."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
import yaml

from kubegate.sources.kubernetes.config import KubeConfigError, KubeSettings, resolve


def kubeconfig(path: Path, current: str | None = "one", **servers: str) -> Path:
    servers = servers or {"one": "http://127.0.0.1:6443"}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}} for name, url in servers.items()],
        "users": [{"name": "me", "user": {"token": "secret-token"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "me"}} for name in servers],
    }
    if current is not None:
        document["current-context"] = current
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


NO_ACCOUNT = Path("/nonexistent/serviceaccount")


def test_current_context_of_an_explicit_file(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", one="http://10.0.0.1:6443", two="http://10.0.0.2:6443")
    connection = resolve(KubeSettings(kubeconfig=path), service_account_dir=NO_ACCOUNT)
    assert connection.server == "http://10.0.0.1:6443"
    assert str(path) in connection.described_as


def test_context_flag_picks_another_context(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", one="http://10.0.0.1:6443", two="http://10.0.0.2:6443")
    connection = resolve(KubeSettings(kubeconfig=path, context="two"), service_account_dir=NO_ACCOUNT)
    assert connection.server == "http://10.0.0.2:6443"


def test_unknown_context_names_the_known_ones(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", one="http://10.0.0.1:6443", two="http://10.0.0.2:6443")
    with pytest.raises(KubeConfigError) as caught:
        resolve(KubeSettings(kubeconfig=path, context="three"), service_account_dir=NO_ACCOUNT)
    message = str(caught.value)
    assert "--context 'three' is not defined" in message and "one, two" in message and str(path) in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"kubeconfig .*nope: file not found"):
        resolve(KubeSettings(kubeconfig=tmp_path / "nope"), service_account_dir=NO_ACCOUNT)


def test_no_current_context(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", current=None)
    with pytest.raises(KubeConfigError, match="no current-context set; pick one with --context"):
        resolve(KubeSettings(kubeconfig=path), service_account_dir=NO_ACCOUNT)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clusters: [", "not valid YAML"),
        ("- a list", "expected a kubeconfig"),
        ("contexts: [{name: x, context: {cluster: x}}]", "no clusters defined"),
        (
            "current-context: x\nclusters: [{name: y, cluster: {server: http://h}}]\n"
            "contexts: [{name: x, context: {cluster: missing}}]",
            "refers to an undefined cluster or user",
        ),
    ],
)
def test_broken_files_are_explained(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(KubeConfigError, match=message):
        resolve(KubeSettings(kubeconfig=path), service_account_dir=NO_ACCOUNT)


def test_kubeconfig_variable_first_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = kubeconfig(tmp_path / "second", one="http://10.0.0.9:6443")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'first'}:{path}")
    assert resolve(KubeSettings(), service_account_dir=NO_ACCOUNT).server == "http://10.0.0.9:6443"


def test_kubeconfig_variable_naming_only_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "first"))
    with pytest.raises(KubeConfigError, match="first: file not found"):
        resolve(KubeSettings(), service_account_dir=NO_ACCOUNT)


def test_nothing_configured(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"no kubeconfig: .* \(give --kubeconfig FILE\)"):
        resolve(KubeSettings(), service_account_dir=NO_ACCOUNT)


def test_default_location(tmp_path: Path) -> None:
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    kubeconfig(tmp_path / "home" / ".kube" / "config", one="http://10.0.0.7:6443")
    assert resolve(KubeSettings(), service_account_dir=NO_ACCOUNT).server == "http://10.0.0.7:6443"


def service_account(directory: Path) -> Path:
    directory.mkdir()
    (directory / "token").write_text("pod-token")
    (directory / "namespace").write_text("kubegate-system")
    (directory / "ca.crt").write_text("")
    return directory


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = service_account(tmp_path / "sa")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    connection = resolve(KubeSettings(), service_account_dir=account)
    assert connection.server == "https://10.96.0.1:443"
    assert "in-cluster" in connection.described_as


def test_explicit_kubeconfig_beats_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = service_account(tmp_path / "sa")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    path = kubeconfig(tmp_path / "config", one="http://10.0.0.1:6443")
    assert (
        resolve(KubeSettings(kubeconfig=path), service_account_dir=account).server == "http://10.0.0.1:6443"
    )


def test_context_without_a_kubeconfig_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = service_account(tmp_path / "sa")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError, match="--context 'x': running in-cluster"):
        resolve(KubeSettings(context="x"), service_account_dir=account)


async def test_the_http_client_sends_the_users_token_to_the_server(tmp_path: Path) -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"kind": "APIVersions"})

    path = kubeconfig(tmp_path / "config", one="http://10.0.0.1:6443")
    connection = resolve(
        KubeSettings(kubeconfig=path), service_account_dir=NO_ACCOUNT, transport=httpx2.MockTransport(handler)
    )
    async with connection.http_client() as http:
        response = await http.get("/api")
    assert response.status_code == 200
    assert str(seen[0].url) == "http://10.0.0.1:6443/api"
    assert seen[0].headers["Authorization"] == "Bearer secret-token"
    client = connection.lightkube_client()
    assert client.config.cluster.server == "http://10.0.0.1:6443"
