import pytest

from kubegate.objects.decode import DecodeError, decode_object
from kubegate.objects.kinds import Ingress


def test_legacy_ingress_converts_service_port_to_number() -> None:
    obj = decode_object(
        {
            "apiVersion": "extensions/v1beta1",
            "kind": "Ingress",
            "metadata": {"name": "web"},
            "spec": {"backend": {"serviceName": "s", "servicePort": 80}},
        }
    )
    assert isinstance(obj, Ingress)
    assert obj.spec.default_backend is not None
    assert obj.spec.default_backend.service is not None
    assert obj.spec.default_backend.service.port.number == 80


def test_wrong_type_names_field() -> None:
    with pytest.raises(DecodeError) as info:
        decode_object(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "a"},
                "spec": {"ports": [{"port": "x"}]},
            }
        )
    assert info.value.field == "spec.ports[0].port"
