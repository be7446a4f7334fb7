"""Pure renderers from the IR to the text other data planes load: nftables rulesets and haproxy.cfg."""

from kubegate.planes.render.haproxy import HAProxyOptions, HAProxyOptionsError, render_haproxy
from kubegate.planes.render.nftables import NftOptions, RenderOptionsError, render_nftables

__all__ = [
    "HAProxyOptions",
    "HAProxyOptionsError",
    "NftOptions",
    "RenderOptionsError",
    "render_haproxy",
    "render_nftables",
]
