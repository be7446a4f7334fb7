"""Write what kubegate serves back to the API server: Service and Ingress ``status.loadBalancer.ingress``.

``StatusWriter.write(translation, snapshot, options)`` compares each status the translation wants with
what the snapshot shows and sends a JSON merge patch to ``/status`` only for those that differ. It also
clears the status of objects that show our addresses but that we no longer serve (a Service that stopped
being a LoadBalancer, an Ingress moved to another class). Only the leader writes: the writer asks
``is_leader`` before every request.

A LoadBalancer IP is recorded only in the Service's status, so writing one is a claim that must never be
made twice. The snapshot may lag behind the API server (a new leader's informers have not yet seen what
the previous leader wrote), so before claiming an IP that the Service does not show yet, the writer lists
Services afresh and refuses any claim on an IP another Service already shows. Clears are sent before
claims, so an IP freed in this pass can be claimed in it. Refused claims are retried on the next pass,
by which time the translation has usually moved the Service to a free address.

Conflicts (409), throttling (429), server errors and connection failures are retried with exponential
back-off; a Service or Ingress deleted meanwhile (404) is skipped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient
from lightkube.resources.core_v1 import Service as ApiService
from lightkube.resources.core_v1 import ServiceStatus
from lightkube.resources.networking_v1 import IngressStatus
from lightkube.types import PatchType

from kubegate.objects.kinds import Ingress, Service
from kubegate.objects.meta import ObjectKey
from kubegate.objects.snapshot import Snapshot
from kubegate.sources.kubernetes.allocations import in_pools, shown_load_balancer_ips
from kubegate.sources.kubernetes.background import Latest
from kubegate.translate.context import Options, Translation

log = logging.getLogger("kubegate.kubernetes.status")

# --------------------------------------------------------------------------------------------------
# API failures, shared by the leader elector and the event recorder

# Everything a lightkube call can fail with, short of a bug: HTTP errors (ApiError included), transport
# failures, a response that does not decode (msgspec errors are ValueErrors), a bounded call timing out.
API_FAILURES: tuple[type[Exception], ...] = (httpx2.HTTPError, ValueError, TimeoutError)
TRANSIENT_CODES = frozenset({409, 429, 500, 502, 503, 504})


def status_code(error: BaseException) -> int | None:
    """The HTTP status of a failed API call, or None when no response came back."""
    if isinstance(error, ApiError):
        code = error.status.code
        return code if code is not None else error.response.status_code
    if isinstance(error, httpx2.HTTPStatusError):
        return error.response.status_code
    return None


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the same request may succeed later."""
    code = status_code(error)
    if code is not None:
        return code in TRANSIENT_CODES
    return isinstance(error, httpx2.TransportError | TimeoutError)


def describe_failure(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return f"{error.status.code} {error.status.reason}: {error.status.message}"
    if isinstance(error, httpx2.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, TimeoutError):
        return "the API server did not answer in time"
    if isinstance(error, httpx2.TransportError):
        return f"cannot reach the API server: {error or type(error).__name__}"
    return f"unreadable answer from the API server: {error}"


# --------------------------------------------------------------------------------------------------
# What to write

StatusKind = Literal["Service", "Ingress"]


def load_balancer_ingress(addresses: Iterable[str]) -> list[dict[str, str]]:
    """status.loadBalancer.ingress entries: an IP address as ``ip``, anything else as ``hostname``."""
    entries: list[dict[str, str]] = []
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            entries.append({"hostname": address})
        else:
            entries.append({"ip": address})
    return entries


@dataclass(frozen=True, slots=True)
class StatusPatch:
    """Set one object's status.loadBalancer.ingress to ``addresses`` (none: remove it)."""

    kind: StatusKind
    namespace: str
    name: str
    addresses: tuple[str, ...]
    # resourceVersion of the object in the snapshot the patch was planned from
    seen_version: str = ""
    # IPs the object does not show yet: a claim, checked against a fresh list first
    claims: tuple[str, ...] = ()
    # the IPs the snapshot showed for it, to tell whether the snapshot is stale
    shown: tuple[str, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.kind, self.namespace, self.name)

    def body(self) -> dict[str, Any]:
        ingress = load_balancer_ingress(self.addresses) if self.addresses else None
        return {"status": {"loadBalancer": {"ingress": ingress}}}


def shown_addresses(obj: Service | Ingress) -> tuple[str, ...]:
    """What status.loadBalancer.ingress shows now: each entry's IP, else its hostname."""
    return tuple(
        entry.ip or entry.hostname for entry in obj.status.load_balancer.ingress if entry.ip or entry.hostname
    )


def plan_status(
    translation: Translation,
    snapshot: Snapshot,
    options: Options,
    ours: Iterable[str] = (),
) -> list[StatusPatch]:
    """The patches that make the cluster show ``translation``'s statuses, clears first.

    ``ours`` adds Ingress addresses kubegate wrote earlier (so a changed --publish-address still lets it
    clear Ingresses it no longer serves). Pure: no I/O.
    """
    clears: list[StatusPatch] = []
    sets: list[StatusPatch] = []
    for (namespace, name), service in sorted(snapshot.services.items()):
        shown = shown_addresses(service)
        version = service.metadata.resource_version
        wanted = translation.service_status.get((namespace, name))
        if wanted is None:
            # ours to clear only when we could have written it: a LoadBalancer of no other class showing
            # an IP from our pools (a cloud controller's or MetalLB's status is left alone)
            foreign_class = service.spec.load_balancer_class not in (None, options.load_balancer_class)
            if shown and not foreign_class and any(in_pools(ip, options.pools) for ip in shown):
                clears.append(StatusPatch("Service", namespace, name, (), version))
            continue
        if wanted == shown:
            continue
        claims = tuple(address for address in wanted if address not in shown)
        target = clears if not wanted else sets
        ips = shown_load_balancer_ips(service)
        target.append(StatusPatch("Service", namespace, name, wanted, version, claims, ips))

    our_addresses = {address for addresses in translation.ingress_status.values() for address in addresses}
    our_addresses.update(options.publish_addresses)
    our_addresses.update(ours)
    for (namespace, name), ingress in sorted(snapshot.ingresses.items()):
        shown = shown_addresses(ingress)
        version = ingress.metadata.resource_version
        wanted = translation.ingress_status.get((namespace, name))
        if wanted is None:
            if shown and set(shown) <= our_addresses:
                clears.append(StatusPatch("Ingress", namespace, name, (), version))
            continue
        if wanted != shown:
            (clears if not wanted else sets).append(StatusPatch("Ingress", namespace, name, wanted, version))
    return clears + sets


def refuse_taken(
    patches: Iterable[StatusPatch], fresh: Mapping[tuple[str, str], tuple[str, ...]]
) -> tuple[list[StatusPatch], list[tuple[StatusPatch, str]]]:
    """Split claiming patches into those that may be sent and those refused, with the reason, given
    ``fresh``: the IPs each Service's status shows, read from the API server just now.

    Refused: a claim on an IP another Service shows, and any claim for a Service whose status changed
    since the snapshot was taken (the view is stale; the next pass decides on a fresher one, instead of
    moving a Service off an address on old information).
    """
    holders: dict[str, tuple[str, str]] = {}
    for key, ips in sorted(fresh.items()):
        for ip in ips:
            holders.setdefault(ip, key)
    allowed: list[StatusPatch] = []
    refused: list[tuple[StatusPatch, str]] = []
    for patch in patches:
        key = (patch.namespace, patch.name)
        now_shown = fresh.get(key, ())
        taken = [(ip, holders[ip]) for ip in patch.claims if ip in holders and holders[ip] != key]
        if taken:
            ip, (namespace, name) = taken[0]
            refused.append((patch, f"{ip} is already shown in the status of Service {namespace}/{name}"))
        elif now_shown != patch.shown:
            shown_text = ", ".join(now_shown) or "nothing"
            refused.append((patch, f"its status changed to {shown_text} since the snapshot; waiting for it"))
        else:
            allowed.append(patch)
    return allowed, refused


# --------------------------------------------------------------------------------------------------
# Writing


@dataclass(slots=True)
class WriteReport:
    """What one pass did."""

    patched: list[ObjectKey] = field(default_factory=list)
    unchanged: int = 0
    # claims on an IP another Service shows: (object, why)
    refused: list[tuple[ObjectKey, str]] = field(default_factory=list)
    # gave up after retries, or refused by the server: (object, why)
    failed: list[tuple[ObjectKey, str]] = field(default_factory=list)
    # True when the pass stopped because we are not (or no longer) the leader
    not_leader: bool = False


@dataclass(frozen=True, slots=True)
class _Written:
    addresses: tuple[str, ...]
    seen_version: str


class StatusWriter:
    """Patches Service and Ingress status for the leader. One instance per process: it remembers what it
    wrote, so it does not patch again while its informers have not caught up with its own writes."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        namespace: str | None = None,
        attempts: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        request_timeout: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._is_leader = is_leader
        # the namespace kubegate watches (None: all); the fresh list before a claim covers the same scope
        self._namespace = namespace
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._request_timeout = request_timeout
        self._sleep = sleep
        self._written: dict[ObjectKey, _Written] = {}
        self._ingress_addresses: set[str] = set()
        self._pending: Latest[tuple[Translation, Snapshot, Options]] = Latest()

    # ----------------------------------------------------------------------------------------------
    # Background use: the reconciler submits each published translation; only the latest is written

    def submit(self, translation: Translation, snapshot: Snapshot, options: Options) -> None:
        """Queue a translation for ``run()``; a newer one replaces one not yet written."""
        self._pending.put((translation, snapshot, options))

    async def run(self) -> None:
        """Write each submitted translation, latest first, until cancelled (write() handles API
        failures itself)."""
        await self._pending.serve(lambda pending: self.write(*pending), "status write-back")

    # ----------------------------------------------------------------------------------------------
    # One pass

    async def write(self, translation: Translation, snapshot: Snapshot, options: Options) -> WriteReport:
        """Make the cluster show ``translation``'s statuses. Never raises for API failures: they are
        logged and listed in the report."""
        report = WriteReport()
        if not self._is_leader():
            report.not_leader = True
            return report
        planned = plan_status(translation, snapshot, options, self._ingress_addresses)
        self._forget_deleted(snapshot)
        patches = [patch for patch in planned if not self._already_written(patch)]
        report.unchanged = len(snapshot.services) + len(snapshot.ingresses) - len(patches)
        clears = [patch for patch in patches if not patch.claims]
        claiming = [patch for patch in patches if patch.claims]
        for patch in clears:
            if not await self._send(patch, report):
                return report
        if claiming:
            fresh = await self._fresh_status(report)
            if fresh is None:
                return report
            allowed, refused = refuse_taken(claiming, fresh)
            for patch, why in refused:
                log.warning("not writing %s to %s: %s", ", ".join(patch.claims), patch.key, why)
                report.refused.append((patch.key, why))
            for patch in allowed:
                if not await self._send(patch, report):
                    return report
        return report

    def _forget_deleted(self, snapshot: Snapshot) -> None:
        if len(self._written) <= len(snapshot.services) + len(snapshot.ingresses):
            # memory stays bounded by the number of objects; walking only beyond that keeps it cheap
            return
        self._written = {
            key: written
            for key, written in self._written.items()
            if (key.namespace, key.name)
            in (snapshot.services if key.kind == "Service" else snapshot.ingresses)
        }

    def _already_written(self, patch: StatusPatch) -> bool:
        # we sent exactly this against exactly this version of the object: the snapshot has not caught
        # up with our own write yet
        written = self._written.get(patch.key)
        return written is not None and written == _Written(patch.addresses, patch.seen_version)

    async def _fresh_status(self, report: WriteReport) -> dict[tuple[str, str], tuple[str, ...]] | None:
        """The IPs each Service's status shows, read from the API server now (None: cannot)."""
        namespace = self._namespace if self._namespace is not None else ALL_NS
        for attempt in range(self._attempts):
            if not self._is_leader():
                report.not_leader = True
                return None
            try:
                fresh: dict[tuple[str, str], tuple[str, ...]] = {}
                async with asyncio.timeout(self._request_timeout * 3):
                    async for service in self._client.list(ApiService, namespace=namespace):
                        metadata, status = service.metadata, service.status
                        if metadata is None or status is None or status.loadBalancer is None:
                            continue
                        ips = tuple(entry.ip for entry in status.loadBalancer.ingress or () if entry.ip)
                        if ips:
                            fresh[(metadata.namespace or "", metadata.name or "")] = ips
                return fresh
            except API_FAILURES as error:
                if not is_transient(error) or attempt + 1 == self._attempts:
                    why = f"cannot list Services to check new LoadBalancer IPs: {describe_failure(error)}"
                    log.warning("%s", why)
                    report.failed.append((ObjectKey("Service", self._namespace or "", ""), why))
                    return None
                await self._sleep(self._delay(attempt))
        return None

    async def _send(self, patch: StatusPatch, report: WriteReport) -> bool:
        """Patch one object's status, retrying transient failures. False when we stopped being leader."""
        resource: type[ServiceStatus] | type[IngressStatus] = (
            ServiceStatus if patch.kind == "Service" else IngressStatus
        )
        for attempt in range(self._attempts):
            if not self._is_leader():
                report.not_leader = True
                return False
            try:
                async with asyncio.timeout(self._request_timeout):
                    await self._client.patch(
                        resource,
                        patch.name,
                        patch.body(),
                        namespace=patch.namespace,
                        patch_type=PatchType.MERGE,
                    )
            except API_FAILURES as error:
                code = status_code(error)
                if code == 404:
                    log.debug("%s is gone; no status to write", patch.key)
                    return True
                if not is_transient(error) or attempt + 1 == self._attempts:
                    why = describe_failure(error)
                    log.warning("cannot write the status of %s: %s", patch.key, why)
                    report.failed.append((patch.key, why))
                    return True
                await self._sleep(self._delay(attempt))
                continue
            self._written[patch.key] = _Written(patch.addresses, patch.seen_version)
            if patch.kind == "Ingress":
                self._ingress_addresses.update(patch.addresses)
            report.patched.append(patch.key)
            log.info(
                "status of %s: load balancer %s",
                patch.key,
                ", ".join(patch.addresses) if patch.addresses else "none",
            )
            return True
        return True

    def _delay(self, attempt: int) -> float:
        # full jitter: replicas and retries spread out instead of hammering a recovering server together
        return random.uniform(0, min(self._max_backoff, self._backoff * 2**attempt))


__all__ = [
    "API_FAILURES",
    "StatusPatch",
    "StatusWriter",
    "WriteReport",
    "describe_failure",
    "is_transient",
    "load_balancer_ingress",
    "plan_status",
    "refuse_taken",
    "status_code",
]
