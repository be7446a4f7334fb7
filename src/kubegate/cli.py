"""The `kubegate` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from kubegate import __version__
from kubegate.display import endpoints_table, ingresses_table, routes_text, services_table
from kubegate.ir.dump import dump_translation, translation_dict
from kubegate.objects.kinds import Ingress, Service
from kubegate.pipeline import Outcome, load_and_translate
from kubegate.settings import SettingsError, add_translate_arguments, options_from_args
from kubegate.sources.files import Problem
from kubegate.state import StateError

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

_RESOURCES = {
    "svc": "services",
    "service": "services",
    "services": "services",
    "ing": "ingresses",
    "ingress": "ingresses",
    "ingresses": "ingresses",
    "ep": "endpoints",
    "endpoints": "endpoints",
}


def _problem_text(problem: Problem) -> str:
    text = str(problem)
    return text if problem.severity == "error" else f"warning: {text}"


def _problem_json(problem: Problem) -> dict[str, object]:
    obj = problem.object
    return {
        "severity": problem.severity,
        "file": problem.origin.source,
        "document": problem.origin.document,
        "line": problem.origin.line,
        "object": None if obj is None else {"kind": obj.kind, "namespace": obj.namespace, "name": obj.name},
        "field": problem.field,
        "message": problem.message,
    }


def _report_problems(outcome: Outcome) -> int:
    """Print problems to stderr; the exit code they imply."""
    problems = outcome.problems()
    for problem in problems:
        print(_problem_text(problem), file=sys.stderr)
    return EXIT_INVALID if any(p.severity == "error" for p in problems) else EXIT_OK


def _cmd_check(outcome: Outcome, args: argparse.Namespace) -> int:
    problems = outcome.problems()
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if args.output == "json":
        document = {
            "objects": len(outcome.load.objects),
            "errors": len(errors),
            "warnings": len(warnings),
            "problems": [_problem_json(p) for p in problems],
            "skipped": [
                {
                    "file": s.origin.source,
                    "line": s.origin.line,
                    "apiVersion": s.api_version,
                    "kind": s.kind,
                    "name": s.name,
                }
                for s in outcome.load.skipped
            ],
        }
        sys.stdout.write(msgspec.json.encode(document).decode() + "\n")
    else:
        for problem in problems:
            print(_problem_text(problem))
        for skipped in outcome.load.skipped:
            print(
                f"{skipped.origin} skipped {skipped.kind} ({skipped.api_version}) {skipped.name}: "
                "not a kind kubegate reads"
            )
        print(
            f"{len(outcome.load.objects)} objects, {len(errors)} errors, {len(warnings)} warnings, "
            f"{len(outcome.load.skipped)} skipped"
        )
    return EXIT_INVALID if errors else EXIT_OK


def _cmd_get(outcome: Outcome, args: argparse.Namespace) -> int:
    code = _report_problems(outcome)
    snapshot = outcome.snapshot

    all_namespaces: bool = args.all_namespaces
    namespace: str = args.namespace

    def visible(candidate: str) -> bool:
        return all_namespaces or candidate == namespace

    resource = _RESOURCES[args.resource]
    if resource == "ingresses":
        ingresses: list[Ingress] = [i for k, i in sorted(snapshot.ingresses.items()) if visible(k[0])]
        text = ingresses_table(ingresses, outcome.translation, args.all_namespaces)
        empty = not ingresses
    else:
        services: list[Service] = [s for k, s in sorted(snapshot.services.items()) if visible(k[0])]
        render = services_table if resource == "services" else endpoints_table
        text = render(services, outcome.translation, args.all_namespaces)
        empty = not services
    if empty:
        where = "any namespace" if args.all_namespaces else f"{args.namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
    else:
        print(text)
    return code


def _cmd_routes(outcome: Outcome, args: argparse.Namespace) -> int:
    code = _report_problems(outcome)
    print(routes_text(outcome.translation))
    return code


def _cmd_translate(outcome: Outcome, args: argparse.Namespace) -> int:
    code = _report_problems(outcome)
    if args.output == "json":
        sys.stdout.write(msgspec.json.encode(translation_dict(outcome.translation)).decode() + "\n")
    else:
        sys.stdout.write(dump_translation(outcome.translation))
    return code


def _cmd_render(outcome: Outcome, args: argparse.Namespace) -> int:
    from kubegate.planes.render import (  # noqa: PLC0415
        HAProxyOptions,
        HAProxyOptionsError,
        NftOptions,
        RenderOptionsError,
        render_haproxy,
        render_nftables,
    )

    code = _report_problems(outcome)
    routing, endpoints = outcome.translation.routing, outcome.translation.endpoints
    nodes = []
    for index, text in enumerate(args.node_address, start=1):
        name, sep, address = text.rpartition("=")
        nodes.append((name if sep else f"node{index}", address))
    try:
        if args.target == "nftables":
            options = NftOptions(
                table=args.table,
                node_name=args.node_name,
                node_addresses=tuple(address for _, address in nodes),
                service_cidr=args.service_cidr,
                dispatch=args.dispatch,
            )
            sys.stdout.write(render_nftables(routing, endpoints, options))
        else:
            haproxy = HAProxyOptions(runtime_socket=args.runtime_socket, node_addresses=tuple(nodes))
            sys.stdout.write(render_haproxy(routing, haproxy))
    except (RenderOptionsError, HAProxyOptionsError) as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return EXIT_USAGE
    return code


def _add_connection_arguments(group: argparse._ArgumentGroup) -> None:
    """Where the API server is, for every command that can read it."""
    group.add_argument(
        "--kubernetes",
        action="store_true",
        help="take objects from the Kubernetes API server (kubeconfig or in-cluster service account)",
    )
    group.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="FILE",
        help="kubeconfig file (default: $KUBECONFIG, in-cluster, then ~/.kube/config)",
    )
    group.add_argument("--context", help="kubeconfig context to use (default: its current-context)")
    group.add_argument(
        "--namespace", help="watch only this namespace (default: all; IngressClasses are cluster-wide)"
    )


def _add_kubernetes_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("kubernetes (instead of PATH)")
    _add_connection_arguments(group)
    group.add_argument(
        "--watch-ingress-without-class",
        action="store_true",
        help="also serve Ingresses with no class and no default IngressClass (as ingress-nginx)",
    )
    group.add_argument(
        "--publish-service",
        metavar="NAMESPACE/NAME",
        help="Ingress status shows this Service's LoadBalancer addresses (kubegate's own Service; "
        "as ingress-nginx); else --publish-address",
    )
    group.add_argument(
        "--election-id",
        default="kubegate-leader",
        metavar="NAME",
        help="the Lease replicas elect a leader with; the leader writes status and Events "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--leader-election-namespace",
        metavar="NAMESPACE",
        help="namespace of the Lease (default: $POD_NAMESPACE, else default)",
    )
    group.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long a leader's Lease holds without renewal: the longest hand-over (default: 15)",
    )
    group.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a leader that could not renew for this long stops acting as leader (default: 10)",
    )
    group.add_argument(
        "--retry-period",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="time between attempts to acquire or renew the Lease (default: 2)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubegate",
        description="Kubernetes Services, Ingress and an API gateway, from standard Kubernetes YAML.",
    )
    parser.add_argument("--version", action="version", version=f"kubegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_paths(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "paths", nargs="+", metavar="PATH", help="manifest file or directory, or - for stdin"
        )
        add_translate_arguments(sub)
        return sub

    check = with_paths("check", "validate manifests; exit 1 if any object has an error")
    check.add_argument("-o", "--output", choices=("text", "json"), default="text")
    check.set_defaults(handler=_cmd_check)

    get = commands.add_parser("get", help="list objects in kubectl's columns", description="list objects")
    get.add_argument("resource", choices=sorted(_RESOURCES), metavar="svc|ing|ep")
    get.add_argument("paths", nargs="+", metavar="PATH")
    get.add_argument("-n", "--namespace", default="default")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    add_translate_arguments(get)
    get.set_defaults(handler=_cmd_get)

    routes = with_paths("routes", "print the routing table in match order")
    routes.set_defaults(handler=_cmd_routes)

    trans = with_paths("translate", "print the routing model (IR) the manifests translate to")
    trans.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    trans.set_defaults(handler=_cmd_translate)
    render_help = "print the nftables ruleset or haproxy.cfg the manifests render to"
    render = commands.add_parser("render", help=render_help, description=render_help)
    render.add_argument("target", choices=("nftables", "haproxy"), help="what to render")
    render.add_argument("paths", nargs="+", metavar="PATH", help="manifest file or directory, or - for stdin")
    add_translate_arguments(render)
    render.add_argument(
        "--node-name",
        default="",
        help="node this ruleset is for: externalTrafficPolicy Local, and only its endpoints need hairpin NAT",
    )
    render.add_argument(
        "--node-address",
        action="append",
        default=[],
        metavar="[NAME=]IP",
        help="a node address: nodePorts answer on it (nftables); a haproxy server (repeatable)",
    )
    render.add_argument("--table", default="kubegate", help="nftables table name")
    render.add_argument(
        "--dispatch",
        choices=("map", "vmap", "rules", "inline"),
        default="map",
        help="how nftables picks an endpoint, as `kubegate proxy --dispatch` (default: %(default)s)",
    )
    render.add_argument("--runtime-socket", default="/run/kubegate/haproxy.sock")
    render.set_defaults(handler=_cmd_render)

    for name, help_text in (
        ("serve", "serve the manifests: proxy HTTP by their Ingress rules, following file changes"),
        ("demo", "serve the manifests (default: examples/) with echo backends on their loopback endpoints"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # serve: PATH or --kubernetes, checked when it runs (argparse cannot say "one of" for these)
        sub.add_argument("paths", nargs="*", metavar="PATH", help="manifest file or directory")
        if name == "serve":
            _add_kubernetes_arguments(sub)
        sub.add_argument("--listen", default="0.0.0.0:8080", metavar="HOST:PORT")
        sub.add_argument(
            "--tls-listen",
            default="0.0.0.0:8443",
            metavar="HOST:PORT",
            help="HTTPS listener (SNI picks the certificate); 'off' to disable",
        )
        sub.add_argument("--admin-listen", default="127.0.0.1:10254", metavar="HOST:PORT")
        sub.add_argument(
            "--node-address",
            default="0.0.0.0",
            metavar="IP",
            help="address nodePorts listen on (userspace mode); 'off' for no L4 listeners",
        )
        sub.add_argument(
            "--workers", type=int, default=None, help="processes sharing the port (default: one per core)"
        )
        sub.add_argument("--access-log", choices=("text", "json", "off"), default="text")
        sub.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS")
        sub.add_argument(
            "--trusted-proxy",
            action="append",
            default=[],
            metavar="CIDR",
            help="trust X-Forwarded-* from these networks (repeatable)",
        )
        sub.add_argument(
            "--client-body-timeout",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="408 when a request body stalls this long between two reads (default: 60)",
        )
        sub.add_argument(
            "--hsts",
            default="max-age=31536000; includeSubDomains",
            metavar="VALUE|off",
            help="Strict-Transport-Security on HTTPS responses for hosts with their own certificate "
            "(default: %(default)s, as ingress-nginx)",
        )
        add_translate_arguments(sub)
        sub.set_defaults(handler=None, long_running=name)

    agent_help = "node agent: keep the kernel's Service rules (nftables) in line with the manifests"
    agent = commands.add_parser("proxy", help=agent_help, description=agent_help)
    agent.add_argument(
        "paths", nargs="*", metavar="PATH", help="manifest file or directory (or --kubernetes)"
    )
    agent.add_argument("--mode", choices=("nftables",), default="nftables")
    agent.add_argument(
        "--node-name",
        default="",
        help="this node's name: externalTrafficPolicy Local, and only its endpoints need hairpin NAT",
    )
    agent.add_argument(
        "--node-address",
        action="append",
        default=[],
        metavar="IP",
        help="answer nodePorts only on these addresses (default: every local address)",
    )
    agent.add_argument("--table", default="kubegate")
    agent.add_argument(
        "--dispatch",
        choices=("map", "vmap", "rules", "inline"),
        default="map",
        help="how a Service picks an endpoint: map (shared chains and data maps: an endpoint change is "
        "map elements only, fast at 10,000 Services), vmap (a chain per Service, kube-proxy's layout), "
        "rules, inline (default: %(default)s)",
    )
    agent.add_argument("--keep-rules-on-exit", action="store_true")
    _add_connection_arguments(agent.add_argument_group("kubernetes (instead of PATH)"))
    add_translate_arguments(agent)
    agent.set_defaults(handler=None, long_running="proxy")

    lb_help = (
        "bare-metal LoadBalancer: run HAProxy in front of the nodes' nodePorts for LoadBalancer Services"
    )
    lb = commands.add_parser("loadbalancer", help=lb_help, description=lb_help)
    lb.add_argument("paths", nargs="+", metavar="PATH", help="manifest file or directory")
    lb.add_argument("--mode", choices=("haproxy",), default="haproxy")
    lb.add_argument(
        "--node-address",
        action="append",
        default=[],
        metavar="NAME=IP",
        required=True,
        help="a node whose nodePorts receive the traffic (repeatable)",
    )
    lb.add_argument(
        "--config",
        type=Path,
        default=Path("/run/kubegate/haproxy.cfg"),
        help="where the haproxy.cfg is written (default: %(default)s)",
    )
    lb.add_argument("--runtime-socket", default="/run/kubegate/haproxy.sock")
    checks = lb.add_argument_group("health checks of the nodes (HAProxy check inter/fall/rise)")
    checks.add_argument(
        "--check-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="time between TCP checks of each node's nodePort (default: 2)",
    )
    checks.add_argument(
        "--check-fall",
        type=int,
        default=3,
        metavar="N",
        help="failed checks in a row that take a node out (default: 3)",
    )
    checks.add_argument(
        "--check-rise",
        type=int,
        default=2,
        metavar="N",
        help="passed checks in a row that bring it back (default: 2)",
    )
    checks.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="connecting to a node, for traffic and checks (default: 5)",
    )
    add_translate_arguments(lb)
    lb.set_defaults(handler=None, long_running="loadbalancer")

    echo = commands.add_parser("echo", help="an echo backend answering JSON about each request")
    echo.add_argument("--name", default="echo")
    echo.add_argument("--listen", default="127.0.0.1:9001", metavar="HOST:PORT")
    echo.set_defaults(handler=None, long_running="echo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "long_running", None):
        # the data planes are imported only by the commands that run them, so `check` starts fast
        from kubegate.runners import run_long_running  # noqa: PLC0415

        return run_long_running(args)
    try:
        options = options_from_args(args)
        outcome = load_and_translate(args.paths, options, args.state, sys.stdin)
    except (SettingsError, StateError) as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return EXIT_USAGE
    code: int = args.handler(outcome, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
