from pathlib import Path

from kubegate.app import demo_commands, loopback_backends
from kubegate.pipeline import load_and_translate
from kubegate.translate.context import Options

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples")


def test_demo_starts_one_echo_per_loopback_endpoint_named_after_its_services() -> None:
    translation = load_and_translate([EXAMPLES], Options()).translation
    backends = loopback_backends(translation)
    assert [(ip, port) for _, ip, port in backends] == [
        ("127.0.0.1", 9001),
        ("127.0.0.1", 9002),
        ("127.0.0.1", 9003),
    ]
    assert backends[2][0] == "default/shop,default/web"


def test_demo_prints_a_curl_for_each_route_loadbalancer_ip_and_nodeport() -> None:
    translation = load_and_translate([EXAMPLES], Options()).translation
    commands = demo_commands(translation, ("0.0.0.0", 8080))
    assert "curl -H 'Host: foo.bar.com' http://127.0.0.1:8080/foo" in commands
    assert any(c.startswith("curl http://127.0.100.1:80/") for c in commands)
    assert sum("nodePort" in c for c in commands) == 2
