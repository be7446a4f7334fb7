"""Leader election on a Lease, against the fake API server: acquire, renew, hand-over, release, races."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from lightkube import AsyncClient

from kubegate.sources.kubernetes.leader import LeaderElector, default_identity
from tests.fakes.apiserver import FakeApiServer
from tests.kubernetes.clients import client_for

NAMESPACE = "kube-system"
LEASE = "kubegate-leader"
# short timings so hand-over tests take about a second
LEASE_DURATION = 1.0
RENEW_DEADLINE = 0.6
RETRY_PERIOD = 0.1


def make(
    client: AsyncClient,
    identity: str,
    *,
    lease_duration: float = LEASE_DURATION,
    renew_deadline: float = RENEW_DEADLINE,
    retry_period: float = RETRY_PERIOD,
    on_started_leading: Callable[[], None] | None = None,
    on_stopped_leading: Callable[[], None] | None = None,
) -> LeaderElector:
    return LeaderElector(
        client,
        NAMESPACE,
        LEASE,
        identity,
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
        on_started_leading=on_started_leading,
        on_stopped_leading=on_stopped_leading,
    )


class Hooked(httpx2.AsyncBaseTransport):
    """Forwards to the real transport; ``before`` may act on each request first (or raise to fail it)."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.before: Callable[[httpx2.Request], None] | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.before is not None:
            self.before(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def clients(api: FakeApiServer) -> AsyncIterator[list[AsyncClient]]:
    made = [client_for(api.url), client_for(api.url)]
    yield made
    for client in made:
        await client.close()


def lease(api: FakeApiServer) -> dict[str, Any]:
    found = api.get("coordination.k8s.io/v1", "Lease", NAMESPACE, LEASE)
    assert found is not None, "the Lease was not created"
    return found


@contextlib.asynccontextmanager
async def running(elector: LeaderElector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(elector.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def within(seconds: float, wait: Awaitable[Any]) -> float:
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        await wait
    return time.monotonic() - started


async def test_acquires_an_absent_lease_and_renews_it(api: FakeApiServer, clients: list[AsyncClient]) -> None:
    gained: list[str] = []
    elector = make(clients[0], "replica-a", on_started_leading=lambda: gained.append("a"))
    async with running(elector):
        await within(2, elector.leading.wait())
        assert elector.is_leader
        first = lease(api)["spec"]
        assert first["holderIdentity"] == "replica-a"
        assert first["leaseDurationSeconds"] == 1
        assert first["leaseTransitions"] == 0
        await asyncio.sleep(0.35)
        renewed = lease(api)["spec"]
    assert gained == ["a"]
    assert renewed["holderIdentity"] == "replica-a"
    assert renewed["renewTime"] > first["renewTime"]
    # renewing is not a transition, and the acquisition time stays
    assert renewed["acquireTime"] == first["acquireTime"]
    assert renewed["leaseTransitions"] == 0
    # cancelled: not leading any more, without releasing
    assert not elector.is_leader
    assert elector.following.is_set()
    assert lease(api)["spec"]["holderIdentity"] == "replica-a"


async def test_follower_takes_over_within_the_lease_duration_when_the_leader_dies(
    api: FakeApiServer, clients: list[AsyncClient]
) -> None:
    first = make(clients[0], "replica-a")
    second = make(clients[1], "replica-b")
    first_task = asyncio.create_task(first.run())
    await within(2, first.leading.wait())
    async with running(second):
        await asyncio.sleep(0.5)
        # while the leader renews, the other replica stays a follower and sees who leads
        assert not second.is_leader
        assert second.holder == "replica-a"
        # the leader dies without releasing: its loop stops, so renewals stop
        first_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first_task
        took = await within(3, second.leading.wait())
        assert second.is_leader
        assert not first.is_leader
        spec = lease(api)["spec"]
    # expiry is measured from the last renewal, which came at most one retry period before the stop
    assert took <= LEASE_DURATION + 3 * RETRY_PERIOD + 0.3
    assert spec["holderIdentity"] == "replica-b"
    assert spec["leaseTransitions"] == 1


async def test_release_hands_over_at_once(api: FakeApiServer, clients: list[AsyncClient]) -> None:
    # a long lease: waiting it out would take 5 s, the hand-over must take a retry period
    lost: list[str] = []
    first = make(
        clients[0],
        "replica-a",
        on_stopped_leading=lambda: lost.append("a"),
        lease_duration=5.0,
        renew_deadline=3.0,
        retry_period=0.1,
    )
    second = make(clients[1], "replica-b", lease_duration=5.0, renew_deadline=3.0, retry_period=0.1)
    first_task = asyncio.create_task(first.run())
    await within(2, first.leading.wait())
    async with running(second):
        await asyncio.sleep(0.3)
        assert not second.is_leader
        assert await first.release()
        # released leadership locally before the Lease was written
        assert lost == ["a"]
        assert not first.is_leader
        assert lease(api)["spec"]["holderIdentity"] in ("", "replica-b")
        took = await within(2, second.leading.wait())
        # release also ends run(): the old leader does not campaign again
        await within(1, first_task)
        await asyncio.sleep(0.3)
        assert second.is_leader
        spec = lease(api)["spec"]
    assert took < 0.6
    assert spec["holderIdentity"] == "replica-b"
    assert spec["leaseTransitions"] == 1


@pytest.mark.parametrize(
    ("written_holder", "released", "holder_after"),
    [
        # seen in CI: release() began while a renewal's PUT was in flight; the renewal committed first,
        # so the release carried a stale resourceVersion and got 409 Conflict: it must still hand over
        pytest.param("replica-a", True, "", id="renewal-committed-first"),
        # our renewals stalled past the lease and another replica took it: leave the new holder alone
        pytest.param("replica-b", False, "replica-b", id="changed-hands"),
    ],
)
async def test_release_after_the_lease_was_written_behind_it(
    api: FakeApiServer, clients: list[AsyncClient], written_holder: str, released: bool, holder_after: str
) -> None:
    first = make(clients[0], "replica-a", lease_duration=50.0, renew_deadline=40.0, retry_period=30.0)
    async with running(first):
        await within(2, first.leading.wait())
        behind = lease(api)
        behind["spec"]["holderIdentity"] = written_holder
        behind["spec"]["renewTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        api.replace(behind)  # a new resourceVersion that the elector has not seen
        assert await first.release() is released
        assert lease(api)["spec"]["holderIdentity"] == holder_after


class ReleasingOnRead:
    """The leader's client, except that one GET of the Lease first lets release() run to the end: a
    renewal round whose read was in flight while the replica released."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.elector: LeaderElector | None = None
        self.armed = False

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed and self.elector is not None:
            self.armed = False
            assert await self.elector.release()
        return await self._client.get(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


async def test_a_round_in_flight_during_release_does_not_take_the_lease_back(
    api: FakeApiServer, clients: list[AsyncClient]
) -> None:
    client = ReleasingOnRead(clients[0])
    first = make(client, "replica-a", lease_duration=50.0, renew_deadline=40.0, retry_period=30.0)  # type: ignore[arg-type]
    client.elector = first
    async with running(first):
        await within(2, first.leading.wait())
        client.armed = True
        # the round reads the Lease just released (no holder): it must not write itself back in
        assert not await first.try_acquire_or_renew(timeout=5.0)
        assert lease(api)["spec"]["holderIdentity"] == ""


async def test_release_when_not_leading_leaves_the_lease_alone(
    api: FakeApiServer, clients: list[AsyncClient]
) -> None:
    leader = make(clients[0], "replica-a")
    follower = make(clients[1], "replica-b")
    async with running(leader):
        await within(2, leader.leading.wait())
        async with running(follower):
            await asyncio.sleep(0.3)
            assert not await follower.release()
            assert lease(api)["spec"]["holderIdentity"] == "replica-a"
            assert leader.is_leader


def _expired_lease(holder: str, transitions: int = 3) -> dict[str, Any]:
    long_ago = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": NAMESPACE},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": long_ago,
            "renewTime": long_ago,
            "leaseTransitions": transitions,
        },
    }


async def test_an_expired_lease_is_taken_at_once_and_counts_a_transition(
    api: FakeApiServer, clients: list[AsyncClient]
) -> None:
    api.create(_expired_lease("dead-replica"))
    elector = make(clients[0], "replica-a")
    assert await elector.try_acquire_or_renew()
    spec = lease(api)["spec"]
    assert spec["holderIdentity"] == "replica-a"
    assert spec["leaseTransitions"] == 4
    assert spec["leaseDurationSeconds"] == 1


async def test_a_valid_lease_of_another_holder_is_not_taken(
    api: FakeApiServer, clients: list[AsyncClient]
) -> None:
    held = _expired_lease("other")
    held["spec"]["renewTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api.create(held)
    elector = make(clients[0], "replica-a")
    assert not await elector.try_acquire_or_renew()
    assert elector.holder == "other"
    assert lease(api)["spec"]["holderIdentity"] == "other"


async def test_a_stale_update_gets_409_and_does_not_lead(api: FakeApiServer) -> None:
    """Two replicas see the same expired Lease; the other one writes first. Our PUT carries the
    resourceVersion we read, so the server refuses it and we stay a follower."""
    api.create(_expired_lease("dead-replica"))
    transport = Hooked()
    client = client_for(api.url, transport)
    puts: list[str] = []

    def race(request: httpx2.Request) -> None:
        if request.method == "PUT" and "/leases/" in request.url.path:
            puts.append(request.url.path)
            current = lease(api)
            current["spec"]["holderIdentity"] = "replica-b"
            current["spec"]["renewTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            api.replace(current)  # bumps the resourceVersion between our GET and our PUT
            transport.before = None

    transport.before = race
    elector = make(client, "replica-a")
    try:
        assert not await elector.try_acquire_or_renew()
        assert puts, "the elector never tried to write the Lease"
        assert not elector.is_leader
        assert lease(api)["spec"]["holderIdentity"] == "replica-b"
        # the next round reads the winner's fresh Lease and does not even try to write
        before = len(api.requests)
        assert not await elector.try_acquire_or_renew()
        assert [method for method, _ in api.requests[before:]] == ["GET"]
        assert elector.holder == "replica-b"
    finally:
        await client.close()


async def test_two_replicas_racing_for_a_new_lease_elect_one(api: FakeApiServer) -> None:
    clients = [client_for(api.url) for _ in range(4)]
    electors = [make(c, f"replica-{i}") for i, c in enumerate(clients)]
    try:
        results = await asyncio.gather(*(elector.try_acquire_or_renew() for elector in electors))
        assert results.count(True) == 1
        winner = electors[results.index(True)].identity
        assert lease(api)["spec"]["holderIdentity"] == winner
    finally:
        for client in clients:
            await client.close()


async def test_leadership_is_given_up_when_renewals_fail_for_the_renew_deadline(api: FakeApiServer) -> None:
    transport = Hooked()
    client = client_for(api.url, transport)
    lost = asyncio.Event()
    elector = make(client, "replica-a", on_stopped_leading=lost.set)

    def unreachable(request: httpx2.Request) -> None:
        raise httpx2.ConnectError("connection refused", request=request)

    try:
        async with running(elector) as task:
            await within(2, elector.leading.wait())
            transport.before = unreachable
            cut = time.monotonic()
            await within(2, lost.wait())
            took = time.monotonic() - cut
            assert not elector.is_leader
            assert not task.done(), "run() must survive API failures and keep campaigning"
            # the API server comes back: the same replica acquires again
            transport.before = None
            await within(2, elector.leading.wait())
    finally:
        await client.close()
    # never later than the renew deadline (plus one round), and never before it minus one retry period
    assert RENEW_DEADLINE - RETRY_PERIOD <= took <= RENEW_DEADLINE + 0.3


async def test_is_leader_turns_false_by_itself_when_renewals_stall(api: FakeApiServer) -> None:
    client = client_for(api.url)
    elector = make(client, "replica-a")
    try:
        assert await elector.try_acquire_or_renew()
        elector.leading.set()  # as run() would; but no loop renews now
        assert elector.is_leader
        await asyncio.sleep(RENEW_DEADLINE + 0.05)
        assert not elector.is_leader
    finally:
        await client.close()


async def test_a_lease_that_does_not_decode_is_a_failed_round_not_a_crash(api: FakeApiServer) -> None:
    transport = Hooked()
    client = client_for(api.url, transport)
    elector = make(client, "replica-a")

    class Garbled(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(
                200, json={"metadata": {"name": LEASE}, "spec": {"renewTime": "yesterday"}}
            )

    client_garbled = client_for(api.url, Garbled())
    garbled = make(client_garbled, "replica-a")
    try:
        assert not await garbled.try_acquire_or_renew()
        assert not garbled.is_leader
        assert await elector.try_acquire_or_renew()
    finally:
        await client.close()
        await client_garbled.close()


def test_timings_are_checked() -> None:
    client = client_for("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        make(client, "a", lease_duration=5, renew_deadline=5, retry_period=1)
    with pytest.raises(ValueError, match="retry period < renew deadline"):
        make(client, "a", lease_duration=5, renew_deadline=2, retry_period=3)
    with pytest.raises(ValueError, match="identity"):
        make(client, "")


def test_default_identities_differ_per_process_start() -> None:
    assert default_identity() != default_identity()
