"""The fake API server driven by lightkube's AsyncClient, the client kubegate's Kubernetes source uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.networking_v1 import (
    IngressBackend,
    IngressServiceBackend,
    IngressSpec,
    ServiceBackendPort,
)
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Service
from lightkube.resources.networking_v1 import Ingress
from lightkube.types import PatchType

from tests.fakes.apiserver import FakeApiServer


@pytest.fixture
async def client(server: FakeApiServer) -> AsyncIterator[AsyncClient]:
    kube = AsyncClient(KubeConfig.from_dict(server.kubeconfig()))
    yield kube
    await kube.close()


def web() -> Service:
    return Service(metadata=ObjectMeta(name="web"), spec=ServiceSpec(ports=[ServicePort(port=80)]))


async def test_create_conflict_and_list_all_namespaces(client: AsyncClient, server: FakeApiServer) -> None:
    created = await client.create(web())
    assert created.metadata is not None and created.metadata.resourceVersion == str(server.resource_version)
    with pytest.raises(ApiError) as refused:
        await client.create(web())
    assert refused.value.status.code == 409 and refused.value.status.reason == "AlreadyExists"
    server.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "other", "namespace": "kube-system"},
            "spec": {"ports": [{"port": 53, "protocol": "UDP"}]},
        }
    )
    names = [
        (s.metadata.namespace, s.metadata.name)
        async for s in client.list(Service, namespace="*")
        if s.metadata
    ]
    assert names == [("default", "web"), ("kube-system", "other")]


async def test_watch_resumes_from_a_version_and_sees_status_writes(
    client: AsyncClient, server: FakeApiServer
) -> None:
    await client.create(web())
    since = str(server.resource_version)
    seen: list[tuple[str, str | None]] = []

    async def follow() -> None:
        async for kind, obj in client.watch(Service, namespace="*", resource_version=since):
            ip = None
            if obj.status and obj.status.loadBalancer and obj.status.loadBalancer.ingress:
                ip = obj.status.loadBalancer.ingress[0].ip
            seen.append((kind, ip))
            if len(seen) == 2:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    await client.patch(Service, "web", {"metadata": {"labels": {"a": "b"}}}, patch_type=PatchType.MERGE)
    status = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}}
    patched = await client.patch(Service.Status, "web", status, patch_type=PatchType.MERGE)
    assert patched.status is not None and patched.status.loadBalancer is not None
    await asyncio.wait_for(task, 5)
    assert seen == [("MODIFIED", None), ("MODIFIED", "192.0.2.7")]


async def test_lease_compare_and_swap(client: AsyncClient) -> None:
    lease = await client.create(
        Lease(metadata=ObjectMeta(name="kubegate"), spec=LeaseSpec(holderIdentity="a"))
    )
    assert lease.spec is not None and lease.metadata is not None
    lease.spec.holderIdentity = "b"
    taken = await client.replace(lease)
    assert taken.spec is not None and taken.spec.holderIdentity == "b"
    lease.spec.holderIdentity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiError) as refused:
        await client.replace(lease)
    assert refused.value.status.code == 409 and refused.value.status.reason == "Conflict"


async def test_server_side_apply_through_lightkube(client: AsyncClient) -> None:
    backend = IngressBackend(service=IngressServiceBackend(name="web", port=ServiceBackendPort(number=80)))
    ingress = Ingress(
        metadata=ObjectMeta(name="site", namespace="default"), spec=IngressSpec(defaultBackend=backend)
    )
    applied = await client.apply(ingress, field_manager="kubegate")
    assert applied.metadata is not None and applied.metadata.generation == 1
    again = await client.apply(ingress, field_manager="kubegate")
    assert again.metadata is not None and again.metadata.resourceVersion == applied.metadata.resourceVersion
