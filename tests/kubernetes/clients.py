"""A lightkube client for the fake API server."""

from __future__ import annotations

import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User


def client_for(url: str, transport: httpx2.AsyncBaseTransport | None = None) -> AsyncClient:
    # an empty user: this lightkube refuses a config without one, and the fake needs no credentials
    return AsyncClient(KubeConfig.from_one(cluster=Cluster(server=url), user=User()), transport=transport)
