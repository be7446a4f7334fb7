"""Objects from a live Kubernetes API server.

- ``config``: ``resolve(KubeSettings(...)) -> KubeConnection`` (kubeconfig, ``--context``, ``KUBECONFIG``
  or the in-cluster service account); ``KubeConnection.http_client()`` / ``.lightkube_client()``.
- ``informer``: ``Informer``, one kind listed then watched (resume, 410 relist and diff, back-off).
- ``source``: ``KubernetesSource``, the informers merged into the reconciler's ``Source`` interface.
"""
