"""The OpenAI Python SDK against the chart's gateway in front of real vLLM pods.

Run by e2e/tests/real_vllm.rs with the SDK suite's virtualenv:
    python real_vllm_sdk.py BASE_URL API_KEY CHAT_MODEL ADAPTER EMBED_MODEL
Exits non-zero (an AssertionError or the SDK's exception) on the first failure.
"""

import sys

import openai
from openai import OpenAI

base_url, api_key, chat_model, adapter, embed_model = sys.argv[1:6]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

reply = client.chat.completions.create(
    model=chat_model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
)
assert reply.model == chat_model, reply
assert reply.usage.completion_tokens == 4, reply.usage
assert isinstance(reply.choices[0].message.content, str)

reply = client.chat.completions.create(
    model=adapter, messages=[{"role": "user", "content": "hello"}], max_tokens=2
)
assert reply.model == adapter, reply

chunks = list(
    client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
)
assert chunks[-1].usage.completion_tokens == 5, chunks[-1]
assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None) >= 5

completion = client.completions.create(model=chat_model, prompt="def f(", max_tokens=3)
assert completion.usage.completion_tokens == 3

embeddings = client.embeddings.create(model=embed_model, input=["a", "b"])
assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) > 0

models = {m.id for m in client.models.list()}
assert {chat_model, adapter, embed_model} <= models, models

try:
    client.chat.completions.create(
        model="no-such/model", messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as err:
    assert err.status_code == 404 and err.code == "model_not_found", err.body

try:
    client.chat.completions.create(
        model=chat_model, messages=[{"role": "user", "content": "x"}], max_tokens=10**6
    )
    raise AssertionError("max_tokens beyond the context must fail")
except openai.BadRequestError as err:
    assert err.status_code == 400 and err.param == "max_tokens", err.body

print("OpenAI SDK against real vLLM: ok")
