"""Where the API server is and how to authenticate: a kubeconfig context or the pod's service account.

Resolution order, as kubectl and client-go do it: ``--kubeconfig FILE``, else the first existing file of
``$KUBECONFIG`` (a colon-separated list), else the in-cluster service account when running in a pod,
else ``~/.kube/config``. ``--context`` picks a context other than the file's current one. Every failure
is a ``KubeConfigError`` whose message names the file, context or setting at fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx2
import yaml
from lightkube import AsyncClient
from lightkube.config.client_adapter import AsyncClient as adapter_async_client
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")
# connect/write timeouts; reads are unbounded on watches (the server closes them by timeoutSeconds)
REQUEST_TIMEOUT_SECONDS = 10.0


class KubeConfigError(Exception):
    """The API server connection cannot be configured; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """What the command line says about the connection."""

    kubeconfig: Path | None = None
    context: str | None = None
    # one namespace to watch; None: all namespaces
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class KubeConnection:
    """A resolved connection: build clients from it as often as needed (one per event loop)."""

    config: SingleConfig
    # where it came from, for log lines: a kubeconfig path or "in-cluster service account"
    described_as: str
    # tests pass an in-process transport here; None: real network
    transport: httpx2.AsyncBaseTransport | None = None

    @property
    def server(self) -> str:
        server: str = self.config.cluster.server
        return server

    def http_client(self) -> httpx2.AsyncClient:
        """An httpx2 session with the cluster's base URL, CA and credentials: what the informers use for
        list and watch, since they need the raw resourceVersion and 410 handling lightkube's watch hides."""
        # lightkube types the transport as the sync kind; it is handed to httpx2.AsyncClient unchanged
        params = ConnectionParams(
            timeout=httpx2.Timeout(REQUEST_TIMEOUT_SECONDS),
            transport=self.transport,  # type: ignore[arg-type]
        )
        try:
            client: httpx2.AsyncClient = adapter_async_client(self.config, params)
        except (ConfigError, OSError, ValueError, AssertionError) as error:
            raise KubeConfigError(f"{self.described_as}: {_reason(error)}") from None
        return client

    def lightkube_client(self) -> AsyncClient:
        """A lightkube AsyncClient for typed requests (Leases, status updates, Events)."""
        try:
            return AsyncClient(
                self.config, timeout=httpx2.Timeout(REQUEST_TIMEOUT_SECONDS), transport=self.transport
            )
        except (ConfigError, OSError, ValueError, AssertionError) as error:
            raise KubeConfigError(f"{self.described_as}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _in_cluster(account_dir: Path) -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (account_dir / "token").is_file()


def _kubeconfig_path(settings: KubeSettings) -> Path | None:
    """The kubeconfig file to read, or None for the in-cluster service account."""
    if settings.kubeconfig is not None:
        return settings.kubeconfig
    listed = [Path(part) for part in os.environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    for candidate in listed:
        if candidate.expanduser().is_file():
            return candidate
    if listed:
        # named but none exists: report the first, as kubectl does
        return listed[0]
    return None


def _load_file(path: Path, context: str | None) -> SingleConfig:
    where = f"kubeconfig {path}"
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KubeConfigError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KubeConfigError(f"{where}: cannot read: {_reason(error)}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise KubeConfigError(f"{where}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise KubeConfigError(f"{where}: expected a kubeconfig (a mapping with clusters and contexts)")
    for section in ("clusters", "contexts"):
        if not isinstance(document.get(section), list) or not document[section]:
            raise KubeConfigError(f"{where}: no {section} defined")
    chosen = context if context is not None else document.get("current-context")
    if not chosen:
        raise KubeConfigError(f"{where}: no current-context set; pick one with --context")
    names = [entry.get("name") for entry in document["contexts"] if isinstance(entry, dict)]
    if chosen not in names:
        known = ", ".join(str(name) for name in names if name) or "none"
        flag = "--context" if context is not None else "current-context"
        raise KubeConfigError(f"{where}: {flag} {chosen!r} is not defined (contexts: {known})")
    try:
        config = KubeConfig.from_dict(document, fname=path.expanduser().resolve()).get(chosen)
    except KeyError as error:
        raise KubeConfigError(
            f"{where}: context {chosen!r} refers to an undefined cluster or user {error}"
        ) from None
    except (ConfigError, TypeError, ValueError, AttributeError) as error:
        raise KubeConfigError(f"{where}: context {chosen!r}: {_reason(error)}") from None
    assert config is not None  # get() returns None only when given a default
    if not config.cluster.server:
        raise KubeConfigError(f"{where}: the cluster of context {chosen!r} has no server")
    return config


def _load_in_cluster(account_dir: Path) -> SingleConfig:
    try:
        config = KubeConfig.from_service_account(account_dir).get()
    except (ConfigError, KeyError, OSError) as error:
        raise KubeConfigError(f"in-cluster service account {account_dir}: {_reason(error)}") from None
    assert config is not None
    return config


def resolve(
    settings: KubeSettings,
    *,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> KubeConnection:
    """The connection the settings and the environment describe. Raises KubeConfigError."""
    path = _kubeconfig_path(settings)
    if path is None and _in_cluster(service_account_dir):
        if settings.context is not None:
            raise KubeConfigError(
                f"--context {settings.context!r}: running in-cluster without a kubeconfig (give --kubeconfig)"
            )
        return KubeConnection(
            _load_in_cluster(service_account_dir),
            f"in-cluster service account {service_account_dir}",
            transport,
        )
    chosen = path if path is not None else DEFAULT_KUBECONFIG
    if path is None and not chosen.expanduser().is_file():
        raise KubeConfigError(
            f"no kubeconfig: {chosen} does not exist, KUBECONFIG is not set and this is not a pod "
            "(give --kubeconfig FILE)"
        )
    return KubeConnection(_load_file(chosen, settings.context), f"kubeconfig {chosen}", transport)
