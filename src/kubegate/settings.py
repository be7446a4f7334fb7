"""Command-line settings shared by every command that translates manifests, turned into translate Options."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import replace
from pathlib import Path

from kubegate.pools import PoolError, load_pools, parse_pools, validate_pools
from kubegate.translate.context import DEFAULT_CONTROLLER_NAME, Options, Pool


class SettingsError(Exception):
    """A command-line value that cannot be used; the message names the flag."""


def add_translate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("translation")
    group.add_argument(
        "--controller-name",
        default=DEFAULT_CONTROLLER_NAME,
        help="IngressClass spec.controller value that marks classes as ours (default: %(default)s)",
    )
    group.add_argument(
        "--default-backend-service",
        metavar="NAMESPACE/NAME:PORT",
        help="controller-wide default backend for requests no Ingress rule matches",
    )
    group.add_argument(
        "--service-cidr",
        default="10.96.0.0/12",
        help="range ClusterIPs are allocated from (default: %(default)s)",
    )
    group.add_argument(
        "--node-port-range",
        default="30000-32767",
        metavar="FIRST-LAST",
        help="range nodePorts are allocated from (default: %(default)s)",
    )
    group.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="POOL",
        help="LoadBalancer address pool: a CIDR or range, or name=...,addresses=... (repeatable; "
        "default: the embedded pool 127.0.100.0/24)",
    )
    group.add_argument(
        "--pools",
        type=Path,
        metavar="FILE",
        help="YAML file of AddressPool (kubegate.io/v1alpha1) or MetalLB IPAddressPool documents",
    )
    group.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="allocation state file: read at start, written atomically after each translation, so "
        "ClusterIPs, nodePorts and LoadBalancer IPs survive restarts",
    )
    group.add_argument(
        "--publish-address",
        action="append",
        default=[],
        metavar="IP",
        help="address written to the status of the Ingresses we serve (repeatable)",
    )


def _node_port_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise SettingsError(f"--node-port-range {text!r}: expected FIRST-LAST, e.g. 30000-32767")
    low, high = int(first), int(last)
    if not 1 <= low <= high <= 65535:
        raise SettingsError(f"--node-port-range {text!r}: need 1 <= FIRST <= LAST <= 65535")
    return low, high


def _pools(args: argparse.Namespace) -> tuple[Pool, ...] | None:
    pools: list[Pool] = []
    try:
        if args.pools is not None:
            pools.extend(load_pools(args.pools))
        pools.extend(parse_pools(args.pool))
        validate_pools(tuple(pools))
    except PoolError as error:
        raise SettingsError(str(error)) from None
    return tuple(pools) if pools else None


def options_from_args(args: argparse.Namespace, *, serve_ingress_without_class: bool = True) -> Options:
    try:
        ipaddress.ip_network(args.service_cidr)
    except ValueError as error:
        raise SettingsError(f"--service-cidr: {error}") from None
    for address in args.publish_address:
        try:
            ipaddress.ip_address(address)
        except ValueError as error:
            raise SettingsError(f"--publish-address: {error}") from None
    backend = args.default_backend_service
    if backend is not None and ("/" not in backend or ":" not in backend):
        raise SettingsError(f"--default-backend-service {backend!r}: expected NAMESPACE/NAME:PORT")
    options = Options(
        controller_name=args.controller_name,
        serve_ingress_without_class=serve_ingress_without_class,
        default_backend=backend,
        service_cidr=args.service_cidr,
        node_port_range=_node_port_range(args.node_port_range),
        publish_addresses=tuple(args.publish_address),
    )
    pools = _pools(args)
    return options if pools is None else replace(options, pools=pools)
