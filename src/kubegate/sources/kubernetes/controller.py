"""What a replica does with the API server beyond reading it: allocate, serve what the cluster shows,
and (the leader only) write status and Events.

Every replica (and every worker process) translates with allocations seeded from the cluster itself
(``ClusterAllocations``: clusterIPs and nodePorts from spec, LoadBalancer IPs from status) and serves only
the LoadBalancer IPs a Service's status already shows (``restrict_to_status``), so replicas agree on
what they serve and an IP never written is never served. One replica, elected with a Lease, writes the
statuses of the unrestricted translation (new IPs, the Ingress addresses) and records per-object
problems as Events; the next reload after its status write lands makes every replica serve the new IP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lightkube import AsyncClient

from kubegate.objects.snapshot import Snapshot
from kubegate.sources.files import Problem
from kubegate.sources.kubernetes.allocations import ClusterAllocations, restrict_to_status
from kubegate.sources.kubernetes.background import cancel_all
from kubegate.sources.kubernetes.events import EventRecorder
from kubegate.sources.kubernetes.leader import LeaderElector, default_identity
from kubegate.sources.kubernetes.status_writer import StatusWriter
from kubegate.translate.context import Allocations, Options, Translation

log = logging.getLogger("kubegate.controller")


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """Leader election and status write-back (`serve --kubernetes` flags)."""

    # the Lease: coordination.k8s.io/v1 in this namespace, with this name (ingress-nginx: --election-id)
    election_namespace: str = "default"
    election_id: str = "kubegate-leader"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Ingress status shows this Service's LoadBalancer addresses (ingress-nginx --publish-service) ...
    # (else Options.publish_addresses, from --publish-address)
    publish_service: tuple[str, str] | None = None
    # the one namespace watched (None: all): the status writer's fresh lists cover the same scope
    namespace: str | None = None


def publish_service_addresses(snapshot: Snapshot, service: tuple[str, str]) -> tuple[str, ...]:
    """The addresses the named Service's status shows (IPs, else hostnames), in order."""
    found = snapshot.services.get(service)
    if found is None:
        return ()
    return tuple(
        ing.ip or ing.hostname for ing in found.status.load_balancer.ingress if ing.ip or ing.hostname
    )


class ClusterController:
    """The Reconciler's cluster hooks (see reconcile.ClusterHooks). With ``writes`` False (secondary
    worker processes) it only seeds and restricts: one process per replica campaigns and writes."""

    def __init__(
        self, client: AsyncClient | None, settings: ControllerSettings, *, writes: bool = True
    ) -> None:
        self.settings = settings
        self._seeding = ClusterAllocations()
        self._tasks: list[asyncio.Task[None]] = []
        self._last: tuple[Translation, Snapshot, Options, tuple[Problem, ...]] | None = None
        self.elector: LeaderElector | None = None
        self.writer: StatusWriter | None = None
        self.recorder: EventRecorder | None = None
        if writes:
            if client is None:
                raise ValueError("a writing cluster controller needs an API client")
            self.elector = LeaderElector(
                client,
                settings.election_namespace,
                settings.election_id,
                settings.identity or default_identity(),
                lease_duration=settings.lease_duration,
                renew_deadline=settings.renew_deadline,
                retry_period=settings.retry_period,
                on_started_leading=self._became_leader,
                on_stopped_leading=lambda: log.info("no longer the leader: status write-back stops"),
                on_new_leader=lambda holder: log.info("leader is %s", holder or "(none)"),
            )
            self.writer = StatusWriter(client, is_leader=self.is_leader, namespace=settings.namespace)
            # the Reconciler logs each problem when it appears: the recorder only writes Events
            self.recorder = EventRecorder(client, is_leader=self.is_leader, log_problems=False)

    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader

    # --- reconciler hooks ---------------------------------------------------------------------------
    def prepare(self, snapshot: Snapshot, options: Options) -> tuple[Options, Allocations]:
        """The options (publish addresses) and allocations to translate this snapshot with."""
        service = self.settings.publish_service
        if service is not None:
            options = replace(options, publish_addresses=publish_service_addresses(snapshot, service))
        return options, self._seeding(snapshot, options)

    def serving(self, translation: Translation, snapshot: Snapshot) -> Translation:
        return restrict_to_status(translation, snapshot)

    def translated(
        self, translation: Translation, snapshot: Snapshot, options: Options, problems: Sequence[Problem]
    ) -> None:
        """After each translation: the leader writes what it says (statuses, Events)."""
        self._last = (translation, snapshot, options, tuple(problems))
        if self.is_leader():
            self._submit()

    def _became_leader(self) -> None:
        log.info("leading: writing status and Events")
        # nothing may change for a long time: write what the current translation says at once
        if self._last is not None:
            self._submit()

    def _submit(self) -> None:
        assert self._last is not None
        translation, snapshot, options, problems = self._last
        if self.writer is not None:
            self.writer.submit(translation, snapshot, options)
        if self.recorder is not None:
            self.recorder.submit(problems, snapshot)

    # --- lifetime -------------------------------------------------------------------------------------
    async def start(self) -> None:
        for part in (self.elector, self.writer, self.recorder):
            if part is not None:
                self._tasks.append(asyncio.create_task(part.run()))

    async def stop(self) -> None:
        """Stop writing and give the Lease up, so another replica takes over at once."""
        await cancel_all(self._tasks)
        if self.elector is not None:
            try:
                await self.elector.release()
            except Exception as error:  # shutting down: a failed release only delays the hand-over
                log.warning("could not release the leader Lease: %s", error)
