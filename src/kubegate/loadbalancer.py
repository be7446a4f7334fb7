"""`kubegate loadbalancer --mode haproxy`: the bare-metal LoadBalancer run by HAProxy.

Each LoadBalancer Service port gets a frontend on its external IP in front of the nodes' nodePorts, with
active TCP health checks. Every change is rendered, checked with `haproxy -c` and applied by a
master-worker reload (old workers finish their connections); a configuration HAProxy refuses is logged and
the running one stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from kubegate.planes.render import HAProxyOptions, render_haproxy
from kubegate.planes.render.driver import ApplyError, HAProxyDriver
from kubegate.reconcile import Reconciler
from kubegate.translate.context import Options, Translation

log = logging.getLogger("kubegate.loadbalancer")


@dataclass(frozen=True, slots=True)
class LoadBalancerConfig:
    paths: tuple[str, ...]
    options: Options
    haproxy: HAProxyOptions
    config_path: Path = Path("/run/kubegate/haproxy.cfg")
    state_file: Path | None = None


class HAProxyLoadBalancer:
    def __init__(self, config: LoadBalancerConfig, driver: HAProxyDriver | None = None) -> None:
        self.config = config
        self.driver = driver or HAProxyDriver(config.config_path)
        self.reconciler = Reconciler(config.paths, config.options, self._publish, config.state_file)
        self.trigger = asyncio.Event()
        self.apply_errors = 0

    def _publish(self, translation: Translation) -> None:
        text = render_haproxy(translation.routing, self.config.haproxy)
        try:
            if self.driver.apply(text):
                log.info("haproxy configuration applied (%d reloads so far)", self.driver.reloads)
        except ApplyError as error:
            self.apply_errors += 1
            log.error("%s; the running configuration stays", error)

    def start(self) -> None:
        self.reconciler.reload()

    async def stop(self) -> None:
        await asyncio.to_thread(self.driver.stop)

    async def run(self) -> int:
        self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.trigger.set)
        watcher = asyncio.create_task(self.reconciler.watch(self.trigger))
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            await self.stop()
        return 0
