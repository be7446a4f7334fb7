"""TLS listener: SNI certificate choice, the default certificate, swaps, broken certificates, and the
ssl-redirect / force-ssl-redirect / app-root answers of the plain-HTTP listener."""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from kubegate.ir.model import Certificate, Endpoint, EndpointTable, Route, RoutingTable, VirtualHost
from kubegate.planes.proxy.server import ProxyServer
from kubegate.planes.proxy.tls import DEFAULT_COMMON_NAME, TlsContexts, load_context
from tests.proxy.helpers import Client, echo_backends, get, prefix

CA = trustme.CA()
CERT_A = CA.issue_cert("a.example.com")
CERT_B = CA.issue_cert("b.example.com")
CERT_WILD = CA.issue_cert("*.wild.example.com")


def certificate(name: str, issued: trustme.LeafCert, hosts: tuple[str, ...]) -> Certificate:
    return Certificate(
        name=name,
        cert_pem="".join(p.bytes().decode() for p in issued.cert_chain_pems),
        key_pem=issued.private_key_pem.bytes().decode(),
        hosts=hosts,
    )


def vhost(host: str, cert: str | None, *routes: Route) -> VirtualHost:
    return VirtualHost(host=host, routes=routes or (prefix("/", "app"),), tls_certificate=cert)


def tls_table(*certs: Certificate, extra: tuple[VirtualHost, ...] = ()) -> RoutingTable:
    hosts = [vhost(h, c.name) for c in certs for h in c.hosts]
    return RoutingTable(virtual_hosts=(*hosts, *extra), certificates=certs)


TABLE = tls_table(
    certificate("default/a", CERT_A, ("a.example.com",)),
    certificate("default/b", CERT_B, ("b.example.com",)),
    certificate("default/wild", CERT_WILD, ("*.wild.example.com",)),
)


def endpoints(port: int) -> EndpointTable:
    return EndpointTable(clusters={"app": (Endpoint(ip="127.0.0.1", port=port),)})


@asynccontextmanager
async def tls_proxy(table: RoutingTable, port: int = 1) -> AsyncIterator[tuple[ProxyServer, int, int]]:
    """A proxy with a plain and a TLS listener; yields it with both ports."""
    server = ProxyServer(table, endpoints(port))
    _, plain = await server.start("127.0.0.1", 0)
    _, secure = await server.start_tls("127.0.0.1", 0)
    try:
        yield server, plain, secure
    finally:
        await server.close(drain_timeout=1.0)
        assert not server.errors, server.errors
        assert server.tls is not None and not server.tls.callback_errors


def trusting() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    CA.configure_trust(context)
    return context


def unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def peer_certificate(
    port: int, sni: str | None, context: ssl.SSLContext | None = None
) -> x509.Certificate:
    """The certificate the proxy presents for this SNI name (None: send no SNI)."""
    async with asyncio.timeout(5):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context or unverified(), server_hostname=sni or ""
        )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def test_sni_picks_the_certificate_of_the_host() -> None:
    async with tls_proxy(TABLE) as (_, _, port):
        assert dns_names(await peer_certificate(port, "a.example.com")) == ["a.example.com"]
        assert dns_names(await peer_certificate(port, "b.example.com")) == ["b.example.com"]
        # SNI names are case-insensitive
        assert dns_names(await peer_certificate(port, "B.Example.COM")) == ["b.example.com"]
        # the wildcard covers exactly one label
        assert dns_names(await peer_certificate(port, "x.wild.example.com")) == ["*.wild.example.com"]
        deeper = await peer_certificate(port, "y.x.wild.example.com")
        assert common_name(deeper) == DEFAULT_COMMON_NAME
        # and a client that verifies accepts what it gets
        verified = await peer_certificate(port, "a.example.com", trusting())
        assert dns_names(verified) == ["a.example.com"]


async def test_alpn_settles_on_http_1_1_for_every_certificate() -> None:
    async with tls_proxy(TABLE) as (_, _, port):
        for sni in ("a.example.com", "x.wild.example.com", "unknown.example.org", ""):
            context = unverified()
            context.set_alpn_protocols(["h2", "http/1.1"])
            async with asyncio.timeout(5):
                _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=sni)
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1", sni
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()


async def test_exact_host_wins_over_the_wildcard() -> None:
    special = CA.issue_cert("api.wild.example.com")
    table = tls_table(
        certificate("default/wild", CERT_WILD, ("*.wild.example.com",)),
        certificate("default/api", special, ("api.wild.example.com",)),
    )
    async with tls_proxy(table) as (_, _, port):
        assert dns_names(await peer_certificate(port, "api.wild.example.com")) == ["api.wild.example.com"]
        assert dns_names(await peer_certificate(port, "web.wild.example.com")) == ["*.wild.example.com"]


async def test_no_sni_or_unknown_name_gets_the_default_certificate() -> None:
    async with tls_proxy(TABLE) as (_, _, port):
        for sni in (None, "unknown.example.org"):
            cert = await peer_certificate(port, sni)
            assert common_name(cert) == DEFAULT_COMMON_NAME
            assert dns_names(cert) == []
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            assert 364 <= lifetime.days <= 366
        # a verifying client rejects it: it is self-signed
        with pytest.raises(ssl.SSLCertVerificationError):
            await peer_certificate(port, "unknown.example.org", trusting())


async def test_the_default_certificate_is_made_once_per_process() -> None:
    first, second = TlsContexts(), TlsContexts(TABLE)
    async with tls_proxy(TABLE) as (_, _, port):
        served = await peer_certificate(port, None)
    assert first.default is not second.default
    async with tls_proxy(RoutingTable()) as (_, _, port):
        assert (await peer_certificate(port, None)).serial_number == served.serial_number


def _tls11_client() -> ssl.SSLContext:
    context = unverified()
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


async def _client_can_speak_tls11() -> bool:
    """Whether this OpenSSL can do TLS 1.1 at all, against a server that allows it."""
    cert_pem = "".join(p.bytes().decode() for p in CERT_A.cert_chain_pems)
    permissive = load_context(cert_pem, CERT_A.private_key_pem.bytes().decode())
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=permissive)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=_tls11_client(), server_hostname=""
            )
        writer.close()
        return True
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        server.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_1_1_is_refused_quietly() -> None:
    if not await _client_can_speak_tls11():
        pytest.skip("this OpenSSL cannot speak TLS 1.1 even to a permissive server")
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with tls_proxy(TABLE) as (server, _, port):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                async with asyncio.timeout(5):
                    await asyncio.open_connection(
                        "127.0.0.1", port, ssl=_tls11_client(), server_hostname="a.example.com"
                    )
            # the listener is still fine for TLS 1.2
            modern = unverified()
            modern.maximum_version = ssl.TLSVersion.TLSv1_2
            assert dns_names(await peer_certificate(port, "a.example.com", modern)) == ["a.example.com"]
            await asyncio.sleep(0.05)
            assert server.stats.connections == 1  # the refused one never reached the proxy
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_garbage_instead_of_a_handshake_is_dropped_quietly() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with tls_proxy(TABLE) as (server, _, port):
            client = await Client.connect(port)
            client.send(get("/", host="a.example.com"))
            assert await client.closed()
            await client.close()
            assert server.stats.connections == 0
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def _https_request(port: int, host: str, path: str) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=trusting(), server_hostname=host
        )
    client = Client(reader, writer)
    try:
        client.send(get(path, host=host))
        response = await client.response()
        return response.status, response.json() if response.status == 200 else {}
    finally:
        await client.close()


async def test_a_request_over_tls_reaches_the_backend_as_https() -> None:
    async with echo_backends("app") as ports, tls_proxy(TABLE, ports["app"]) as (_, plain, secure):
        status, echoed = await _https_request(secure, "a.example.com", "/hello?x=1")
        assert status == 200
        assert (echoed["path"], echoed["query"]) == ("/hello", "x=1")
        headers = {k.lower(): v for k, v in echoed["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-port"] == str(secure)
        # the wildcard host routes and terminates too
        status, echoed = await _https_request(secure, "z.wild.example.com", "/")
        assert status == 200
        # the plain listener of the same server still says http (no redirect without ssl_redirect)
        client = await Client.connect(plain)
        client.send(get("/", host="a.example.com"))
        response = await client.response()
        await client.close()
        assert response.status == 200
        headers = {k.lower(): v for k, v in response.json()["headers"]}
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-port"] == str(plain)


async def test_a_certificate_swap_is_seen_by_the_next_handshake() -> None:
    renewed = CA.issue_cert("a.example.com")
    async with tls_proxy(TABLE) as (server, _, port):
        before = await peer_certificate(port, "a.example.com")
        assert server.tls is not None
        context_b = server.tls.context_for("b.example.com")
        swapped = tls_table(
            certificate("default/a", renewed, ("a.example.com",)),
            certificate("default/b", CERT_B, ("b.example.com",)),
        )
        server.update_routing(swapped)
        after = await peer_certificate(port, "a.example.com")
        assert after.serial_number != before.serial_number
        assert dns_names(after) == ["a.example.com"]
        # the unchanged certificate kept its context (a swap reloads only what changed)
        assert server.tls.context_for("b.example.com") is context_b
        # the wildcard certificate is gone from the table, so its hosts now get the default
        assert common_name(await peer_certificate(port, "x.wild.example.com")) == DEFAULT_COMMON_NAME


def _broken_certificates() -> list[Certificate]:
    good_b = certificate("default/b", CERT_B, ("b.example.com",))
    mismatched = Certificate(
        name="default/mismatch",
        cert_pem=certificate("x", CERT_A, ()).cert_pem,
        key_pem=good_b.key_pem,
        hosts=("a.example.com",),
    )
    garbage = Certificate(
        name="default/garbage",
        cert_pem="-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        key_pem=good_b.key_pem,
        hosts=("x.wild.example.com",),
    )
    return [mismatched, garbage, good_b]


async def test_a_broken_certificate_is_skipped_and_reported() -> None:
    table = tls_table(*_broken_certificates())
    async with tls_proxy(table) as (server, _, port):
        errors = {e.certificate: e.message for e in server.tls_errors}
        assert set(errors) == {"default/mismatch", "default/garbage"}
        assert "does not belong" in errors["default/mismatch"]
        assert common_name(await peer_certificate(port, "a.example.com")) == DEFAULT_COMMON_NAME
        assert common_name(await peer_certificate(port, "x.wild.example.com")) == DEFAULT_COMMON_NAME
        assert dns_names(await peer_certificate(port, "b.example.com")) == ["b.example.com"]
        # fixing it in the next table clears the error and serves it
        server.update_routing(TABLE)
        assert server.tls_errors == ()
        assert dns_names(await peer_certificate(port, "a.example.com")) == ["a.example.com"]


def test_an_encrypted_key_is_an_error_not_a_prompt() -> None:
    key = serialization.load_pem_private_key(CERT_A.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    good = certificate("default/a", CERT_A, ("a.example.com",))
    contexts = TlsContexts(
        tls_table(Certificate(name="default/enc", cert_pem=good.cert_pem, key_pem=encrypted))
    )
    assert [e.certificate for e in contexts.errors] == ["default/enc"]
    assert "encrypted" in contexts.errors[0].message


# --- redirects on the plain listener -------------------------------------------------------------------


async def _plain(port: int, request: bytes) -> Any:
    client = await Client.connect(port)
    try:
        client.send(request)
        return await client.response()
    finally:
        await client.close()


REDIRECTING = RoutingTable(
    virtual_hosts=(
        vhost("a.example.com", "default/a", prefix("/", "app", ssl_redirect=True)),
        # ssl_redirect without a certificate on the host: nothing to redirect to
        vhost("plain.example.com", None, prefix("/", "app", ssl_redirect=True)),
        vhost("forced.example.com", None, prefix("/", "app", force_ssl_redirect=True)),
        vhost("root.example.com", None, prefix("/", "app", app_root="/app1")),
    ),
    certificates=(certificate("default/a", CERT_A, ("a.example.com",)),),
)


async def test_ssl_redirect_answers_308_with_path_and_query() -> None:
    async with echo_backends("app") as ports, tls_proxy(REDIRECTING, ports["app"]) as (_, plain, secure):
        response = await _plain(plain, get("/shop/cart?item=3&x=%20y", host="A.example.com:8080"))
        assert response.status == 308
        assert response.header("Location") == f"https://a.example.com:{secure}/shop/cart?item=3&x=%20y"
        # the same route over TLS is proxied, not redirected again
        status, echoed = await _https_request(secure, "a.example.com", "/shop/cart?item=3")
        assert (status, echoed["path"], echoed["query"]) == (200, "/shop/cart", "item=3")
        # a host without a certificate is not redirected by ssl_redirect
        assert (await _plain(plain, get("/x", host="plain.example.com"))).status == 200


async def test_redirect_port_443_is_left_out_and_can_be_set() -> None:
    async with echo_backends("app") as ports, tls_proxy(REDIRECTING, ports["app"]) as (server, plain, _):
        server.set_https_redirect_port(443)
        response = await _plain(plain, get("/p?q", host="a.example.com"))
        assert response.header("Location") == "https://a.example.com/p?q"


async def test_force_ssl_redirect_without_a_certificate() -> None:
    async with echo_backends("app") as ports, tls_proxy(REDIRECTING, ports["app"]) as (server, plain, _):
        server.set_https_redirect_port(443)
        client = await Client.connect(plain)
        client.send(get("/login?next=/home", host="forced.example.com"))
        first = await client.response()
        # keep-alive survives the redirect
        client.send(get("/again", host="forced.example.com"))
        second = await client.response()
        await client.close()
        assert first.status == second.status == 308
        assert first.header("Location") == "https://forced.example.com/login?next=/home"
        assert second.header("Location") == "https://forced.example.com/again"


async def test_app_root_redirects_only_the_root() -> None:
    async with echo_backends("app") as ports, tls_proxy(REDIRECTING, ports["app"]) as (server, plain, _):
        response = await _plain(plain, get("/", host="root.example.com"))
        assert response.status == 302
        assert response.header("Location") == "http://root.example.com/app1"
        assert (await _plain(plain, get("/?q=1", host="root.example.com"))).status == 302
        proxied = await _plain(plain, get("/other", host="root.example.com"))
        assert proxied.status == 200
        assert proxied.json()["path"] == "/other"
        assert server.stats.status_counts.get(302) == 2


async def test_without_a_tls_listener_only_force_ssl_redirect_redirects() -> None:
    async with echo_backends("app") as ports:
        server = ProxyServer(REDIRECTING, endpoints(ports["app"]))
        _, plain = await server.start("127.0.0.1", 0)
        try:
            assert (await _plain(plain, get("/x", host="a.example.com"))).status == 200
            forced = await _plain(plain, get("/x", host="forced.example.com"))
            assert (forced.status, forced.header("Location")) == (308, "https://forced.example.com/x")
        finally:
            await server.close(drain_timeout=1.0)
        assert server.tls is None and not server.errors


async def https_get(port: int, sni: str, host: str) -> bytes:
    """One request over TLS; the whole response (the proxy closes after it)."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=unverified(), server_hostname=sni
        )
        writer.write(get("/", host=host, extra="Connection: close\r\n"))
        data = await reader.read()
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return data


async def test_hsts_on_https_responses_for_hosts_with_their_own_certificate() -> None:
    table = tls_table(
        certificate("default/a", CERT_A, ("a.example.com",)), extra=(vhost("plain.example.com", None),)
    )
    async with echo_backends("app") as ports:
        server = ProxyServer(table, endpoints(ports["app"]))
        _, plain = await server.start("127.0.0.1", 0)
        _, secure = await server.start_tls("127.0.0.1", 0)
        try:
            with_cert = await https_get(secure, "a.example.com", "a.example.com")
            assert b"\r\nStrict-Transport-Security: max-age=31536000; includeSubDomains\r\n" in with_cert
            # served with the generated default certificate: no policy pinned on the browser
            default_cert = await https_get(secure, "plain.example.com", "plain.example.com")
            assert b" 200 " in default_cert and b"Strict-Transport-Security" not in default_cert
            # never over plain HTTP (RFC 6797 7.2)
            c = await Client.connect(plain)
            c.send(get("/", host="plain.example.com"))
            assert (await c.response()).header("Strict-Transport-Security") is None
            await c.close()
        finally:
            await server.close(drain_timeout=1.0)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_failed_handshakes_are_counted() -> None:
    async with tls_proxy(TABLE) as (server, _, port):
        assert server.stats.tls_handshake_failures == 0
        # not TLS at all
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        with suppress(OSError):
            async with asyncio.timeout(5):
                await reader.read()
        writer.close()
        # a client that offers only TLS 1.1
        old = unverified()
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with suppress(ssl.SSLError, OSError):
            async with asyncio.timeout(5):
                await asyncio.open_connection("127.0.0.1", port, ssl=old, server_hostname="a.example.com")
        # a good handshake is not counted
        await peer_certificate(port, "a.example.com")
        # counted when the loop lets go of the connection: at once on uvloop (the default), while the
        # stdlib loop's failed handshake leaves a cycle through the exception's traceback, so there the
        # count waits for the next garbage collection
        on_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        gc.disable()
        try:
            async with asyncio.timeout(5):
                while server.stats.tls_handshake_failures < 2:
                    if not on_uvloop:
                        gc.collect()
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
        finally:
            gc.enable()
        assert server.stats.tls_handshake_failures == 2
