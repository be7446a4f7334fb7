"""`kubegate proxy --mode nftables`: the node agent that keeps the kernel's Service rules in line with the
manifests, like kube-proxy in nftables mode.

Every published translation is rendered and applied as one `nft -f` transaction; a ruleset the kernel
refuses is logged and the last good one stays in force. One renderer lives as long as the agent, so a
translation re-renders only the Services whose inputs changed, and the driver sends only their
difference. Every few seconds the agent checks that nobody changed or removed its table and re-applies
it if so. On SIGTERM it removes its table.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from kubegate.planes.render import NftOptions
from kubegate.planes.render.driver import ApplyError, NftDriver
from kubegate.planes.render.nftables import NftRenderer
from kubegate.reconcile import Reconciler
from kubegate.sources.kubernetes.config import KubeConnection
from kubegate.sources.kubernetes.controller import ClusterController, ControllerSettings
from kubegate.sources.kubernetes.source import SERVICE_RESOURCES, KubernetesSource
from kubegate.translate.context import Options, Translation

log = logging.getLogger("kubegate.agent")
DRIFT_CHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    paths: tuple[str, ...]
    options: Options
    nft: NftOptions
    state_file: Path | None = None
    keep_rules_on_exit: bool = False
    # objects from this API server instead of `paths` (only what a node needs: Services and endpoints)
    kubernetes: KubeConnection | None = None
    kubernetes_namespace: str | None = None


class NftablesAgent:
    def __init__(self, config: AgentConfig, driver: NftDriver | None = None) -> None:
        self.config = config
        self.driver = driver or NftDriver(table=config.nft.table, family=config.nft.family)
        self.renderer = NftRenderer(config.nft)
        source: KubernetesSource | None = None
        cluster: ClusterController | None = None
        if config.kubernetes is not None:
            source = KubernetesSource(
                config.kubernetes,
                namespace=config.kubernetes_namespace,
                controller_name=config.options.controller_name,
                resources=SERVICE_RESOURCES,
            )
            # the gateway's leader writes LoadBalancer status; a node agent renders what status shows
            cluster = ClusterController(
                None, ControllerSettings(namespace=config.kubernetes_namespace), writes=False
            )
        self.reconciler = Reconciler(
            config.paths, config.options, self._publish, config.state_file, source=source, cluster=cluster
        )
        self.trigger = asyncio.Event()
        self.apply_errors = 0

    def _publish(self, translation: Translation) -> None:
        rendered = self.renderer.render(translation.routing, translation.endpoints)
        try:
            if self.driver.apply(rendered):
                log.info(
                    "applied nftables table %s (%d Services, %s)",
                    self.config.nft.table,
                    len(rendered.groups),
                    "only the difference" if self.driver.last_incremental else "whole table",
                )
        except ApplyError as error:
            self.apply_errors += 1
            log.error("%s; the previous rules stay in force", error)

    async def run(self) -> int:
        await self.reconciler.start()
        self.reconciler.reload()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.trigger.set)
        watcher = asyncio.create_task(self.reconciler.watch(self.trigger))
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), DRIFT_CHECK_SECONDS)
                except TimeoutError:
                    try:
                        if await asyncio.to_thread(self.driver.reapply_if_drifted):
                            log.warning("nftables table %s had drifted: re-applied", self.config.nft.table)
                    except ApplyError as error:
                        log.error("%s", error)
        finally:
            watcher.cancel()
            await self.reconciler.stop()
            if not self.config.keep_rules_on_exit:
                try:
                    self.driver.remove()
                    log.info("removed nftables table %s", self.config.nft.table)
                except ApplyError as error:
                    log.error("%s", error)
        return 0
