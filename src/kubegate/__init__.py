"""kubegate: the path by which traffic from outside a Kubernetes cluster reaches its applications."""

__version__ = "0.1.0"
