"""The OpenAI Python SDK against kinfer-gateway: every call an application makes, and every
gateway error decoded into the SDK exception class an application catches.

Started by run.sh, which provides the gateway (static discovery), its TLS twin and vllm-sim
replicas. Tests marked `every_transport` also run over h2c and TLS (conftest.py).
"""

import json
import os
import time
import urllib.request

import openai
import pytest

GATEWAY = os.environ["KINFER_GATEWAY_URL"]
TLS_GATEWAY = os.environ["KINFER_TLS_GATEWAY_URL"]
ADMIN = os.environ["KINFER_ADMIN_URL"]
MODEL = os.environ["KINFER_MODEL"]
EMBEDDING_MODEL = os.environ["KINFER_EMBEDDING_MODEL"]
MESSAGES = [{"role": "user", "content": "Write a haiku about GPUs."}]


@pytest.fixture
def client(transport):
    return transport.openai(TLS_GATEWAY if transport.tls else GATEWAY)


@pytest.mark.every_transport
def test_model_list_includes_adapters_and_cold_models(client):
    models = {model.id: model for model in client.models.list()}
    assert {MODEL, "sql-lora", EMBEDDING_MODEL, "cold-model"} <= set(models)
    assert models["sql-lora"].model_extra["parent"] == MODEL
    assert models[MODEL].model_extra["ready_replicas"] == 2
    assert models["cold-model"].model_extra["ready_replicas"] == 0
    assert all(model.object == "model" and model.owned_by for model in models.values())


@pytest.mark.every_transport
def test_model_retrieve_with_a_slash_in_the_id(client):
    assert client.models.retrieve(MODEL).id == MODEL


@pytest.mark.every_transport
def test_chat(transport, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, extra_headers={"x-request-id": "sdk-chat-1"}
    )
    assert raw.http_response.http_version == transport.http_version
    assert raw.headers["x-request-id"] == "sdk-chat-1"
    assert raw.headers["x-kinfer-replica"] in {"sim-a", "sim-b"}
    completion = raw.parse()
    assert completion.model == MODEL
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 8


def test_chat_is_spread_over_replicas(client):
    replicas = {
        client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=1).headers[
            "x-kinfer-replica"
        ]
        for _ in range(4)
    }
    assert replicas == {"sim-a", "sim-b"}


@pytest.mark.every_transport
def test_chat_streaming(transport, client):
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    assert stream.response.http_version == transport.http_version
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert len(chunks) >= 12
    assert chunks[-1].usage.completion_tokens == 12


def test_lora_adapter(client):
    completion = client.chat.completions.create(model="sql-lora", messages=MESSAGES, max_tokens=4)
    assert completion.model == "sql-lora"


@pytest.mark.every_transport
def test_completions(client):
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    assert completion.choices[0].text
    assert completion.usage.completion_tokens == 6


def test_completions_streaming(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)


@pytest.mark.every_transport
def test_embeddings(client):
    response = client.embeddings.create(model=EMBEDDING_MODEL, input=["first", "second"])
    assert len(response.data) == 2
    assert len(response.data[0].embedding) > 0


def test_tools_pass_through(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    history = MESSAGES + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"celsius": 21})},
    ]
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    with_tools = client.chat.completions.create(
        model=MODEL, messages=history, tools=tools, tool_choice="auto", max_tokens=2
    )
    # The engine saw the tools and the tool-call history: they make the prompt longer.
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens


@pytest.mark.every_transport
def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4-nonexistent", messages=MESSAGES)
    assert error.value.code == "model_not_found"
    assert error.value.param == "model"
    assert "gpt-4-nonexistent" in error.value.message


def test_missing_model_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="", messages=MESSAGES)
    assert error.value.code == "missing_model"


def test_model_of_wrong_type_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=42, messages=MESSAGES)
    assert error.value.code == "invalid_body"


def test_engine_error_passes_through(client):
    # More tokens than the replicas' --max-model-len: vLLM's own 400.
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100_000)
    assert error.value.response.headers["x-kinfer-replica"] in {"sim-a", "sim-b"}


def test_embeddings_on_a_generation_model_is_unsupported(client):
    with pytest.raises(openai.InternalServerError) as error:
        client.embeddings.create(model=MODEL, input="x")
    assert error.value.status_code == 501
    assert error.value.code == "unsupported_endpoint"


def test_model_without_replicas_is_503_with_retry_after(client):
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="cold-model", messages=MESSAGES)
    assert isinstance(error.value, openai.APIStatusError)
    assert error.value.status_code == 503
    assert error.value.code == "no_ready_replica"
    assert error.value.response.headers["retry-after"] == "2"


def test_held_stream_gets_keep_alives_then_the_engine_stream(client):
    # late-model has no replica: the request is held, and after one keep-alive interval
    # (--hold-keepalive-interval 200ms) answered 200 with SSE comments, which the SDK skips.
    stream = client.chat.completions.create(model="late-model", messages=MESSAGES, max_tokens=8, stream=True)
    assert stream.response.status_code == 200
    assert stream.response.headers["content-type"] == "text/event-stream"
    time.sleep(0.6)
    # The replica turns ready: the static file (re-read every 200 ms) gains an endpoint.
    path = os.environ["KINFER_MODELS_FILE"]
    with open(path) as file:
        text = file.read()
    endpoint = f"  - id: late-model\n    endpoints: [{os.environ['KINFER_LATE_REPLICA_URL']}]\n"
    with open(path + ".new", "w") as file:
        file.write(text.replace("  - id: late-model\n", endpoint))
    os.replace(path + ".new", path)
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert chunks[-1].choices[0].finish_reason is not None


@pytest.mark.every_transport
def test_held_stream_without_a_replica_ends_with_an_error_event(client):
    # Held longer than the keep-alive interval: 200 and keep-alives, then the hold ends (1 s)
    # without a replica, and the error is an SSE event the SDK raises as an APIError.
    stream = client.chat.completions.create(model="cold-model", messages=MESSAGES, stream=True)
    assert stream.response.status_code == 200
    with pytest.raises(openai.APIError) as error:
        list(stream)
    assert not isinstance(error.value, openai.APIStatusError)
    assert error.value.code == "no_ready_replica"
    assert error.value.type == "api_error"
    assert "cold-model" in error.value.message


def test_unreachable_replica_is_502(client):
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="broken-model", messages=MESSAGES)
    assert error.value.status_code == 502
    assert error.value.code == "backend_unreachable"


# HTTP/1.1 only: over HTTP/2 the gateway answers 413 as soon as it sees the Content-Length and
# resets the stream with NO_ERROR (RFC 9113 section 8.1; curl shows the 413), but httpx raises a
# protocol error for the rest of the body it can no longer send, and not the response.
def test_oversized_body_is_413(client):
    with pytest.raises(openai.APIStatusError) as error:
        client.completions.create(model=MODEL, prompt="x" * 100_000, max_tokens=1)
    assert error.value.status_code == 413
    assert error.value.code == "body_too_large"


def test_metrics_count_requests():
    with urllib.request.urlopen(f"{ADMIN}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f'kinfer_gateway_requests_total{{model="{MODEL}",code="200"}}' in text
    assert 'kinfer_gateway_requests_total{model="(unknown)",code="404"}' in text
    assert f'kinfer_gateway_inflight_requests{{model="{MODEL}"}} 0' in text
