"""The transports the SDK suite runs over, and the check that each was really used.

A test that takes the `transport` fixture runs over HTTP/1.1 on the plain port ("http1"). Marked
`every_transport`, it also runs over HTTP/2 with prior knowledge on the plain port ("h2c"), and
over TLS on the TLS twin of the gateway, with ALPN choosing HTTP/2 ("tls-h2") or offering only
HTTP/1.1 ("tls-http1"). The rest of the suite exercises the gateway's logic, which does not
depend on the transport; the marked tests are the calls an application makes (chat, streaming,
completions, embeddings, models, errors, keys).

Every response's HTTP version is recorded by an httpx event hook and checked after the test: a
client that quietly fell back to HTTP/1.1 fails it.
"""

import functools
import os
import ssl
from dataclasses import dataclass, field

import openai
import pytest


@dataclass(frozen=True)
class Transport:
    name: str
    tls: bool
    # What `response.http_version` must say for every response.
    http_version: str
    # httpx client options besides the event hook and the CA.
    options: dict = field(default_factory=dict)


TRANSPORTS = {
    transport.name: transport
    for transport in [
        Transport("http1", tls=False, http_version="HTTP/1.1"),
        # httpx speaks h2c only with prior knowledge, and only when HTTP/1.1 is off.
        Transport("h2c", tls=False, http_version="HTTP/2", options={"http1": False, "http2": True}),
        # Both offered by ALPN; the gateway must pick h2.
        Transport("tls-h2", tls=True, http_version="HTTP/2", options={"http2": True}),
        # Only http/1.1 offered by ALPN.
        Transport("tls-http1", tls=True, http_version="HTTP/1.1"),
    ]
}


def pytest_configure(config):
    config.addinivalue_line("markers", "every_transport: also run over h2c, tls-h2 and tls-http1")


def pytest_generate_tests(metafunc):
    if "transport" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("every_transport") is not None
        names = list(TRANSPORTS) if marked else ["http1"]
        metafunc.parametrize("transport", names, indirect=True)


@functools.cache
def trust_test_ca():
    """Trusts the test CA only. Given to plain clients too: httpx would otherwise load the
    system's CA certificates for every client, a tenth of a second each."""
    return ssl.create_default_context(cafile=os.environ["KINFER_TLS_CA_FILE"])


class Connection:
    """Clients of one transport for one test, and the HTTP versions of their responses."""

    def __init__(self, transport):
        self.transport = transport
        self.versions = []
        self.clients = []

    @property
    def tls(self):
        return self.transport.tls

    @property
    def http_version(self):
        return self.transport.http_version

    def http(self):
        """An httpx client (the SDK's defaults) over this transport."""
        client = openai.DefaultHttpxClient(
            verify=trust_test_ca(),
            event_hooks={"response": [lambda response: self.versions.append(response.http_version)]},
            **self.transport.options,
        )
        self.clients.append(client)
        return client

    def openai(self, gateway_url, api_key="unused"):
        # No SDK retries: each test sees the gateway's own answer.
        return openai.OpenAI(
            base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=30, http_client=self.http()
        )


@pytest.fixture
def transport(request):
    connection = Connection(TRANSPORTS[request.param])
    yield connection
    for client in connection.clients:
        client.close()
    assert connection.versions, f"no response over {connection.transport.name}"
    wrong = sorted({version for version in connection.versions if version != connection.http_version})
    assert not wrong, f"{connection.transport.name}: responses over {wrong}, expected {connection.http_version}"
