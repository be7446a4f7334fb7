"""Test doubles for systems that cannot run here: a fake Kubernetes API server (``apiserver.py``)."""
