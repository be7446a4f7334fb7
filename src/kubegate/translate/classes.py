"""Which Ingresses are ours: the class pass.

The rules, in order (the first that applies decides):
1. ``spec.ingressClassName`` names an IngressClass; ours when that class exists and its
   ``spec.controller`` is our controller name. A class that does not exist means "not ours" (its
   controller may simply not be installed yet), as ingress-nginx does.
2. The legacy ``kubernetes.io/ingress.class`` annotation; ours when it names an IngressClass whose
   controller is ours, or is literally ``kubegate``.
3. An IngressClass marked ``ingressclass.kubernetes.io/is-default-class: "true"``; ours when a default
   class is ours. (The API server refuses class-less Ingresses while two classes are default, so "any
   default class is ours" only matters for objects created before the second default appeared.)
4. Otherwise ``Options.serve_ingress_without_class`` (true for files, ``--watch-ingress-without-class``
   for the API server).

Ingresses that are not ours are ignored without a diagnostic: they belong to another controller.
"""

from __future__ import annotations

from collections.abc import Mapping

from kubegate.objects.kinds import LEGACY_CLASS_ANNOTATION, Ingress, IngressClass
from kubegate.translate.context import Options

LEGACY_CLASS_VALUE = "kubegate"


class ClassSelector:
    """Answers "is this Ingress ours?" for one set of IngressClasses and options."""

    def __init__(self, classes: Mapping[str, IngressClass], options: Options) -> None:
        self.ours = frozenset(
            name for name, cls in classes.items() if cls.spec.controller == options.controller_name
        )
        self.known = frozenset(classes)
        defaults = [cls for cls in classes.values() if cls.is_default]
        self.has_default = bool(defaults)
        self.default_is_ours = any(cls.spec.controller == options.controller_name for cls in defaults)
        self.without_class = options.serve_ingress_without_class

    def is_ours(self, ingress: Ingress) -> bool:
        name = ingress.spec.ingress_class_name
        if name:
            return name in self.ours
        legacy = ingress.metadata.annotations.get(LEGACY_CLASS_ANNOTATION)
        if legacy is not None:
            return legacy == LEGACY_CLASS_VALUE or legacy in self.ours
        if self.has_default:
            return self.default_is_ours
        return self.without_class
