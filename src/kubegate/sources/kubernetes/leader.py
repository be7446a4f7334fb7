"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection package does it.

Every replica runs a ``LeaderElector`` on the same Lease. One round (``try_acquire_or_renew``) reads the
Lease and writes it back with our identity when it is absent, released (empty holder), expired, or already
ours. The write carries the resourceVersion we read, so of two replicas racing for an expired Lease the API
server accepts one and answers 409 Conflict to the other, which stays a follower this round.

- A holder renews every ``retry_period``. When no renewal has succeeded for ``renew_deadline`` it stops
  leading, before any other replica may consider the Lease expired (``renew_deadline < lease_duration``),
  so two replicas never act as leader at once as long as clocks advance at the same rate.
- Another holder's Lease is expired when ``renewTime + leaseDurationSeconds`` is in the past, or when the
  record has not changed for ``leaseDurationSeconds`` since we first saw it. The first rule lets a replica
  that starts after the leader died take over at once; the second, measured on our own monotonic clock as
  client-go does, still expires a Lease whose holder's wall clock runs ahead of ours.
- ``leaseTransitions`` counts changes of holder; ``acquireTime`` is when the current holder took it.
- ``release()`` (on shutdown) first stops leading, then clears the holder, so the next replica takes over
  on its next round instead of waiting out the lease.

Failures of the API server (unreachable, 5xx, a Lease that does not decode) are logged and count as a
failed round; they never escape ``run()``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from lightkube import AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from kubegate.sources.kubernetes.status_writer import API_FAILURES, describe_failure, status_code

log = logging.getLogger("kubegate.kubernetes.leader")

# Rounds while following are spread over [retry_period, retry_period * (1 + JITTER)], so replicas that
# start together do not hit the API server in lockstep.
JITTER = 0.2


def default_identity() -> str:
    """A holder identity unique per process: the pod name (or host name) and a random suffix, so a
    restarted replica with the same name does not silently inherit a Lease it can no longer renew."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "kubegate"
    return f"{base}_{uuid.uuid4().hex[:8]}"


def utc_now() -> datetime:
    return datetime.now(UTC)


# a renewal in flight can win the first write of release(); one more is enough, three is generous
RELEASE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What the Lease says, with absent fields as the API leaves them."""

    holder: str
    lease_duration_seconds: int | None
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    resource_version: str

    @staticmethod
    def of(lease: Lease) -> LeaseRecord:
        spec = lease.spec or LeaseSpec()
        metadata = lease.metadata or ObjectMeta()
        return LeaseRecord(
            holder=spec.holderIdentity or "",
            lease_duration_seconds=spec.leaseDurationSeconds,
            acquire_time=_aware(spec.acquireTime),
            renew_time=_aware(spec.renewTime),
            transitions=spec.leaseTransitions or 0,
            resource_version=metadata.resourceVersion or "",
        )

    def content(self) -> tuple[object, ...]:
        """Everything but the resourceVersion: what tells us the holder is still renewing."""
        return (
            self.holder,
            self.lease_duration_seconds,
            self.acquire_time,
            self.renew_time,
            self.transitions,
        )


def _aware(moment: datetime | None) -> datetime | None:
    # MicroTime is always UTC on the wire; a naive value (never from a real server) is read as UTC
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


class LeaderElector:
    """Campaign for one Lease until cancelled; see the module docstring for the rules.

    ``leading`` is set while this replica leads and ``following`` while it does not; ``on_started_leading``
    and ``on_stopped_leading`` are called on each change, ``on_new_leader`` whenever the observed holder
    changes (with "" when the Lease is released).
    """

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        on_new_leader: Callable[[str], None] | None = None,
        wall_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not name or not namespace:
            raise ValueError("leader election needs the Lease's namespace and name")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election timings must satisfy 0 < retry period < renew deadline < lease duration "
                f"(got {retry_period}, {renew_deadline}, {lease_duration})"
            )
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._wall_clock = wall_clock
        self.leading = asyncio.Event()
        self.following = asyncio.Event()
        self.following.set()
        # the record as we last read or wrote it, and when (monotonic) its content last changed
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        # monotonic time at which our last successful write was sent
        self._renewed_at = -math.inf
        self._released = False

    # ----------------------------------------------------------------------------------------------
    # State

    @property
    def is_leader(self) -> bool:
        """True only while a renewal has succeeded within the renew deadline, even if ``run()`` is stuck:
        a replica that cannot prove it still holds the Lease must not act as leader."""
        return self.leading.is_set() and time.monotonic() - self._renewed_at < self.renew_deadline

    @property
    def holder(self) -> str:
        """The holder identity last seen on the Lease ("" when none or not read yet)."""
        return self._observed.holder if self._observed is not None else ""

    @property
    def _record_duration(self) -> int:
        # leaseDurationSeconds is an integer in the API; round up so others never expire us early
        return max(1, math.ceil(self.lease_duration))

    # ----------------------------------------------------------------------------------------------
    # The loop

    async def run(self) -> None:
        """Acquire, renew, and after losing the Lease campaign again, until cancelled or released.
        Cancelling does not release the Lease (call ``release()`` for that); it stops leading at once."""
        try:
            while not self._released:
                await self._acquire()
                if self._released:
                    return
                await self._renew_until_lost()
        finally:
            self._set_leading(False)

    async def _acquire(self) -> None:
        while not self._released:
            # released while the round was in flight: do not start leading after release() stopped us
            if await self.try_acquire_or_renew() and not self._released:
                self._set_leading(True)
                return
            await asyncio.sleep(self.retry_period * (1 + JITTER * random.random()))

    async def _renew_until_lost(self) -> None:
        while not self._released:
            await asyncio.sleep(self.retry_period)
            if self._released:
                return
            remaining = self.renew_deadline - (time.monotonic() - self._renewed_at)
            if remaining > 0 and await self.try_acquire_or_renew(timeout=remaining):
                continue
            if time.monotonic() - self._renewed_at >= self.renew_deadline:
                log.warning(
                    "lost leadership of Lease %s/%s: no renewal succeeded for %.1fs",
                    self.namespace,
                    self.name,
                    self.renew_deadline,
                )
                self._set_leading(False)
                return

    def _set_leading(self, leading: bool) -> None:
        if leading == self.leading.is_set():
            return
        if leading:
            self.following.clear()
            self.leading.set()
            log.info("became leader of Lease %s/%s as %s", self.namespace, self.name, self.identity)
            callback = self._on_started
        else:
            self.leading.clear()
            self.following.set()
            log.info("stopped leading Lease %s/%s", self.namespace, self.name)
            callback = self._on_stopped
        if callback is not None:
            try:
                callback()
            except Exception:
                # a faulty callback must not stop the election, which the other replicas rely on
                log.exception("leader election callback failed")

    # ----------------------------------------------------------------------------------------------
    # One round

    async def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        """Read the Lease and take or renew it if allowed. True when we hold it now."""
        if self._released:
            return False
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.renew_deadline):
                written = await self._round()
        except API_FAILURES as error:
            code = status_code(error)
            if code == 409:
                log.debug("Lease %s/%s: lost a race to another replica", self.namespace, self.name)
            else:
                log.warning(
                    "Lease %s/%s: cannot acquire or renew: %s",
                    self.namespace,
                    self.name,
                    describe_failure(error),
                )
            return False
        if written is None:
            return False
        self._observe(written)
        self._renewed_at = started
        return True

    async def _round(self) -> LeaseRecord | None:
        """The record we wrote, or None when another replica holds a valid Lease."""
        now = self._wall_clock()
        try:
            current = await self._client.get(Lease, self.name, namespace=self.namespace)
        except API_FAILURES as error:
            if status_code(error) != 404:
                raise
            created = await self._client.create(self._lease(self._new_spec(None, now), resource_version=None))
            return LeaseRecord.of(created)
        record = LeaseRecord.of(current)
        self._observe(record)
        if record.holder and record.holder != self.identity and not self._expired(record, now):
            return None
        if self._released:
            # release() ran while the read was in flight and may have cleared the holder: taking the
            # Lease again now would make the next leader wait out a whole lease duration
            return None
        spec = self._new_spec(record, now)
        replaced = await self._client.replace(self._lease(spec, record.resource_version))
        return LeaseRecord.of(replaced)

    def _expired(self, record: LeaseRecord, now: datetime) -> bool:
        duration = record.lease_duration_seconds or self._record_duration
        if record.renew_time is not None and record.renew_time + timedelta(seconds=duration) <= now:
            return True
        return time.monotonic() - self._observed_at >= duration

    def _new_spec(self, previous: LeaseRecord | None, now: datetime) -> LeaseSpec:
        ours = previous is not None and previous.holder == self.identity
        transitions = 0 if previous is None else previous.transitions + (0 if ours else 1)
        acquired = previous.acquire_time if ours and previous is not None else now
        return LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=self._record_duration,
            acquireTime=acquired or now,
            renewTime=now,
            leaseTransitions=transitions,
        )

    def _lease(self, spec: LeaseSpec, resource_version: str | None) -> Lease:
        return Lease(
            metadata=ObjectMeta(name=self.name, namespace=self.namespace, resourceVersion=resource_version),
            spec=spec,
        )

    def _observe(self, record: LeaseRecord) -> None:
        previous = self._observed
        if previous is None or previous.content() != record.content():
            self._observed_at = time.monotonic()
        self._observed = record
        if (previous is None or previous.holder != record.holder) and self._on_new_leader is not None:
            try:
                self._on_new_leader(record.holder)
            except Exception:
                log.exception("leader election callback failed")

    # ----------------------------------------------------------------------------------------------
    # Shutdown

    async def release(self) -> bool:
        """Stop leading and clear the Lease's holder so another replica takes over at once. Stops
        ``run()`` from campaigning again. True when the Lease was released; False when we did not hold
        it (or the write failed, in which case it expires as usual)."""
        self._released = True
        was_leader = self.leading.is_set()
        # stop acting as leader before anyone else may start
        self._set_leading(False)
        observed = self._observed
        if not was_leader or observed is None or observed.holder != self.identity:
            return False
        try:
            async with asyncio.timeout(self.renew_deadline):
                released = await self._write_release(observed)
        except API_FAILURES as error:
            log.warning(
                "Lease %s/%s: cannot release, it expires in %ss instead: %s",
                self.namespace,
                self.name,
                self._record_duration,
                describe_failure(error),
            )
            return False
        if released is None:
            return False
        self._observed = LeaseRecord.of(released)
        log.info("released Lease %s/%s", self.namespace, self.name)
        return True

    async def _write_release(self, observed: LeaseRecord) -> Lease | None:
        """Write the Lease without a holder; None when it turned out not to be ours any more. A renewal
        that was already in flight when release() began may commit first and move the resourceVersion:
        then the write gets 409 Conflict, and the Lease is read again and released as it now is."""
        for _ in range(RELEASE_ATTEMPTS):
            now = self._wall_clock()
            spec = LeaseSpec(
                holderIdentity="",
                leaseDurationSeconds=1,
                acquireTime=now,
                renewTime=now,
                leaseTransitions=observed.transitions,
            )
            try:
                return await self._client.replace(self._lease(spec, observed.resource_version))
            except API_FAILURES as error:
                if status_code(error) != 409:
                    raise
                conflict = error
            observed = LeaseRecord.of(await self._client.get(Lease, self.name, namespace=self.namespace))
            if observed.holder != self.identity:
                return None
        raise conflict
