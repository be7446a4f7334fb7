"""The long-running commands (serve, demo, proxy, loadbalancer, echo): from parsed arguments to a running
process. Kept apart from cli.py so the one-shot commands never import the data planes."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from dataclasses import replace

from kubegate import app
from kubegate.agent import AgentConfig, NftablesAgent
from kubegate.echo import serve_echo
from kubegate.ir.model import EndpointTable, RoutingTable
from kubegate.loadbalancer import HAProxyLoadBalancer, LoadBalancerConfig
from kubegate.planes.proxy.http import ProxySettings
from kubegate.planes.render import (
    HAProxyOptions,
    HAProxyOptionsError,
    NftOptions,
    RenderOptionsError,
    render_haproxy,
    render_nftables,
)
from kubegate.settings import SettingsError, options_from_args
from kubegate.sources.kubernetes.config import KubeConfigError, KubeConnection, KubeSettings, resolve
from kubegate.sources.kubernetes.controller import ControllerSettings
from kubegate.state import StateError

EXIT_USAGE = 2


def run_long_running(args: argparse.Namespace) -> int:

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # the API client logs every request at INFO (a Lease renewal every few seconds): only its problems
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if args.long_running == "proxy":
        return _run_agent(args)
    if args.long_running == "loadbalancer":
        return _run_loadbalancer(args)
    try:
        listen = app.parse_listen(args.listen, "--listen")
        if args.long_running == "echo":
            print(f"kubegate echo {args.name!r} on {listen[0]}:{listen[1]}", file=sys.stderr)

            async def echo_forever() -> int:
                await serve_echo(args.name, *listen)
                return 0

            return app.run_event_loop(echo_forever())
        kubernetes = _kubernetes_connection(args)
        options = options_from_args(
            args, serve_ingress_without_class=kubernetes is None or args.watch_ingress_without_class
        )
        if kubernetes is not None:
            # the API server allocated ClusterIPs and nodePorts; we only follow them
            options = replace(options, addresses_from_spec=True)
        config = app.ServeConfig(
            paths=tuple(args.paths or ["examples"]) if kubernetes is None else (),
            options=options,
            kubernetes=kubernetes,
            kubernetes_namespace=getattr(args, "namespace", None),
            controller=_controller_settings(args) if kubernetes is not None else ControllerSettings(),
            listen=listen,
            tls_listen=None
            if args.tls_listen == "off"
            else app.parse_listen(args.tls_listen, "--tls-listen"),
            admin_listen=app.parse_listen(args.admin_listen, "--admin-listen"),
            node_address=None if args.node_address == "off" else args.node_address,
            state_file=args.state,
            access_log=None if args.access_log == "off" else args.access_log,
            proxy=_proxy_settings(args),
            drain_seconds=args.drain_timeout,
        )
    except (ValueError, SettingsError, KubeConfigError) as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.long_running == "demo":
            return app.run_event_loop(app.run_demo(config))
        workers = args.workers if args.workers is not None else app.default_workers()
        return app.serve(config, workers)
    except StateError as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return EXIT_USAGE


def _kubernetes_connection(args: argparse.Namespace) -> KubeConnection | None:
    """The API server connection for `serve --kubernetes`, or None for PATH. Raises SettingsError for a
    wrong combination, KubeConfigError for an unusable kubeconfig."""
    if not getattr(args, "kubernetes", False):
        for flag in ("kubeconfig", "context", "namespace", "publish_service", "leader_election_namespace"):
            if getattr(args, flag, None) is not None:
                raise SettingsError(f"--{flag.replace('_', '-')} needs --kubernetes")
        if getattr(args, "watch_ingress_without_class", False):
            raise SettingsError("--watch-ingress-without-class needs --kubernetes")
        if args.long_running in ("serve", "proxy") and not args.paths:
            raise SettingsError(
                f"{args.long_running}: give a manifest PATH, or --kubernetes to read the API server"
            )
        return None
    if args.paths:
        raise SettingsError(
            f"{args.long_running}: PATH ({' '.join(args.paths)}) and --kubernetes exclude each other: "
            "pick one source"
        )
    return resolve(KubeSettings(args.kubeconfig, args.context, args.namespace))


def _proxy_settings(args: argparse.Namespace) -> ProxySettings:
    """The data plane's flags. Raises ValueError naming the flag."""
    if not args.client_body_timeout > 0:
        raise ValueError(f"--client-body-timeout {args.client_body_timeout}: must be more than 0 seconds")
    hsts = "" if args.hsts == "off" else args.hsts
    if any(c in hsts for c in "\r\n"):
        raise ValueError("--hsts: the value must be one line")
    return ProxySettings(
        trusted_proxies=tuple(args.trusted_proxy), client_body_timeout=args.client_body_timeout, hsts=hsts
    )


def _controller_settings(args: argparse.Namespace) -> ControllerSettings:
    """Leader election and status flags of `serve --kubernetes`. Raises SettingsError."""
    publish: tuple[str, str] | None = None
    if args.publish_service is not None:
        namespace, sep, name = args.publish_service.partition("/")
        if not sep or not namespace or not name:
            raise SettingsError(f"--publish-service {args.publish_service!r}: expected NAMESPACE/NAME")
        publish = (namespace, name)
    if not 0 < args.retry_period < args.renew_deadline < args.lease_duration:
        raise SettingsError(
            "leader election needs 0 < --retry-period < --renew-deadline < --lease-duration "
            f"(got {args.retry_period}, {args.renew_deadline}, {args.lease_duration})"
        )
    return ControllerSettings(
        election_namespace=args.leader_election_namespace or os.environ.get("POD_NAMESPACE") or "default",
        election_id=args.election_id,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        publish_service=publish,
        namespace=args.namespace,
    )


def _run_agent(args: argparse.Namespace) -> int:

    try:
        nft = NftOptions(
            table=args.table,
            node_name=args.node_name,
            node_addresses=tuple(args.node_address),
            service_cidr=args.service_cidr,
            dispatch=args.dispatch,
        )
        # options are checked when rendering: check them now, on an empty table, not on the first change
        render_nftables(RoutingTable(), EndpointTable(), nft)
        kubernetes = _kubernetes_connection(args)
        options = options_from_args(args)
        if kubernetes is not None:
            options = replace(options, addresses_from_spec=True)
    except (RenderOptionsError, SettingsError, KubeConfigError) as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return EXIT_USAGE
    config = AgentConfig(
        paths=tuple(args.paths),
        kubernetes=kubernetes,
        kubernetes_namespace=args.namespace,
        options=options,
        nft=nft,
        state_file=args.state,
        keep_rules_on_exit=args.keep_rules_on_exit,
    )
    return app.run_event_loop(NftablesAgent(config).run())


def _haproxy_maxconn(ceiling: int = 20000) -> int:
    """HAProxy needs about two descriptors per connection: stay within this process's hard limit, or it
    refuses to start ("Cannot raise FD limit")."""

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ceiling if hard == resource.RLIM_INFINITY else max(100, min(ceiling, (hard - 100) // 2))


def _run_loadbalancer(args: argparse.Namespace) -> int:

    nodes = []
    for text in args.node_address:
        name, sep, address = text.rpartition("=")
        nodes.append((name if sep else address, address))
    try:
        haproxy = HAProxyOptions(
            runtime_socket=args.runtime_socket,
            node_addresses=tuple(nodes),
            maxconn=_haproxy_maxconn(),
            check_inter_ms=round(args.check_interval * 1000),
            check_fall=args.check_fall,
            check_rise=args.check_rise,
            timeout_connect_ms=round(args.connect_timeout * 1000),
        )
        render_haproxy(RoutingTable(), haproxy)  # checks the options now, not on the first change
        options = options_from_args(args)
    except (HAProxyOptionsError, SettingsError) as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return EXIT_USAGE
    config = LoadBalancerConfig(
        paths=tuple(args.paths),
        options=options,
        haproxy=haproxy,
        config_path=args.config,
        state_file=args.state,
    )
    return app.run_event_loop(HAProxyLoadBalancer(config).run())
