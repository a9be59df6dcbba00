"""The OpenAI Python SDK against kinfer-gateway with authentication on (--auth, keys from a
file): 401/403/429 decoded as the SDK's exception classes, rate-limit headers, token
accounting invisible to the client.

Started by run.sh, which provides the second gateway, its TLS twin and their keys file. Tests
marked `every_transport` also run over h2c and TLS (conftest.py).
"""

import os
import urllib.request

import openai
import pytest

GATEWAY = os.environ["KINFER_AUTH_GATEWAY_URL"]
TLS_GATEWAY = os.environ["KINFER_AUTH_TLS_GATEWAY_URL"]
ADMIN = os.environ["KINFER_AUTH_ADMIN_URL"]
MODEL = os.environ["KINFER_MODEL"]
EMBEDDING_MODEL = os.environ["KINFER_EMBEDDING_MODEL"]
MESSAGES = [{"role": "user", "content": "Write a haiku about GPUs."}]


def gateway(transport):
    return TLS_GATEWAY if transport.tls else GATEWAY


@pytest.fixture
def client(transport):
    """key -> an SDK client with that key, over the test's transport."""
    return lambda key: transport.openai(gateway(transport), api_key=key)


@pytest.mark.every_transport
def test_wrong_key_is_authentication_error(client):
    with pytest.raises(openai.AuthenticationError) as error:
        client("sk-wrong").chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert error.value.status_code == 401
    assert error.value.code == "invalid_api_key"
    assert "sk-wrong" not in error.value.message


@pytest.mark.every_transport
def test_missing_key_is_authentication_error(transport):
    # The SDK insists on a key; send none with its HTTP client.
    response = transport.http().get(f"{gateway(transport)}/v1/models", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.every_transport
def test_model_outside_the_key_is_permission_denied(client):
    with pytest.raises(openai.PermissionDeniedError) as error:
        client("sk-test-generation").embeddings.create(model=EMBEDDING_MODEL, input="x")
    assert error.value.status_code == 403
    assert error.value.code == "model_not_allowed"
    assert error.value.param == "model"


@pytest.mark.every_transport
def test_models_lists_only_what_the_key_may_use(client):
    restricted = {model.id for model in client("sk-test-generation").models.list()}
    assert restricted == {MODEL, "sql-lora"}
    full = {model.id for model in client("sk-test-full").models.list()}
    assert {MODEL, EMBEDDING_MODEL, "sql-lora", "cold-model"} <= full


def test_rate_limit_is_rate_limit_error_with_headers(client):
    slow = client("sk-test-slow")
    raw = slow.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as error:
        slow.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert error.value.status_code == 429
    assert error.value.code == "rate_limit_exceeded"
    headers = error.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]


def test_metered_stream_looks_unmetered(client):
    metered = client("sk-test-metered")
    chunks = list(metered.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True))
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks), "no usage-only chunk the client did not ask for"
    asked = list(
        metered.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].usage.completion_tokens == 5
    with urllib.request.urlopen(f"{ADMIN}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'kinfer_gateway_key_tokens_total{key="metered"}' in text
    assert "sk-test" not in text
