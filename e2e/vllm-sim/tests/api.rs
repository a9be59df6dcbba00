//! Endpoint formats, checked over a real listener on 127.0.0.1.

mod common;

use common::{chat, json, sse_payloads, start};
use kinfer_vllm_sim::{Config, LoraModule};
use serde_json::{json, Value};

const MODEL: &str = "test/model";

#[tokio::test]
async fn chat_stream_frames_match_vllm_byte_for_byte() {
    let sim = start(Config::for_tests(MODEL)).await;
    let mut request = chat(MODEL, "Tell me about caches");
    request["max_tokens"] = json!(4);
    let expected_text = sim.post_ok("/v1/chat/completions", request.clone()).await["choices"][0]
        ["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    request["stream"] = json!(true);
    let response = sim.post("/v1/chat/completions", request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    let payloads = sse_payloads(&body);
    // role chunk + 4 tokens + [DONE]; no usage chunk without stream_options.
    assert_eq!(payloads.len(), 6, "{body}");
    assert_eq!(*payloads.last().unwrap(), "[DONE]");

    let first = json(payloads[0]);
    let id = first["id"].as_str().unwrap();
    let created = first["created"].as_u64().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    let head = format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"{MODEL}","choices":"#
    );
    assert_eq!(
        payloads[0],
        format!(
            r#"{head}[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
        )
    );
    // Tokens carry the space before their word.
    let tokens: Vec<String> = expected_text
        .split(' ')
        .enumerate()
        .map(|(i, word)| {
            if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            }
        })
        .collect();
    assert_eq!(tokens.len(), 4, "{expected_text:?}");
    for (i, token) in tokens.iter().enumerate() {
        let expected = if i < 3 {
            format!(
                r#"{head}[{{"index":0,"delta":{{"content":"{token}"}},"logprobs":null,"finish_reason":null}}]}}"#
            )
        } else {
            format!(
                r#"{head}[{{"index":0,"delta":{{"content":"{token}"}},"logprobs":null,"finish_reason":"length","stop_reason":null}}]}}"#
            )
        };
        assert_eq!(payloads[i + 1], expected);
    }
}

#[tokio::test]
async fn usage_chunk_only_when_asked() {
    let sim = start(Config::for_tests(MODEL)).await;
    let mut request = chat(MODEL, "usage please");
    request["stream"] = json!(true);
    request["max_completion_tokens"] = json!(3);

    request["stream_options"] = json!({"include_usage": true});
    let body = sim
        .post("/v1/chat/completions", request.clone())
        .await
        .text()
        .await
        .unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.len(), 1 + 3 + 1 + 1);
    let usage_chunk = json(payloads[payloads.len() - 2]);
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert_eq!(usage["completion_tokens"], 3);
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt_tokens + 3);
    assert!(usage.get("prompt_tokens_details").is_none());
    // Other chunks carry no usage.
    for payload in &payloads[..payloads.len() - 2] {
        assert!(json(payload).get("usage").is_none());
    }

    request["stream_options"] = json!({"include_usage": false});
    let body = sim
        .post("/v1/chat/completions", request.clone())
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(sse_payloads(&body).len(), 1 + 3 + 1);

    // stream_options without stream is rejected, as in vLLM.
    request["stream"] = json!(false);
    request["stream_options"] = json!({"include_usage": true});
    assert_eq!(
        sim.post("/v1/chat/completions", request).await.status(),
        400
    );
}

#[tokio::test]
async fn completion_stream_and_non_stream_shapes() {
    let sim = start(Config::for_tests(MODEL)).await;
    let request =
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "stream": true});
    let body = sim
        .post("/v1/completions", request)
        .await
        .text()
        .await
        .unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.len(), 5 + 1, "no role chunk for completions");
    let mut streamed = String::new();
    for (i, payload) in payloads[..5].iter().enumerate() {
        let chunk = json(payload);
        assert_eq!(chunk["object"], "text_completion");
        assert!(chunk["id"].as_str().unwrap().starts_with("cmpl-"));
        // exclude_unset=False in vLLM: usage and stop_reason are present as null.
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some());
        let choice = &chunk["choices"][0];
        assert_eq!(choice["stop_reason"], Value::Null);
        assert!(choice.get("stop_reason").is_some());
        assert_eq!(
            choice["finish_reason"],
            if i == 4 { json!("length") } else { Value::Null }
        );
        streamed.push_str(choice["text"].as_str().unwrap());
    }

    let response = sim
        .post_ok(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5}),
        )
        .await;
    assert_eq!(response["object"], "text_completion");
    assert_eq!(response["choices"][0]["text"], streamed.as_str());
    assert_eq!(response["choices"][0]["finish_reason"], "length");
    assert_eq!(response["usage"]["completion_tokens"], 5);
    assert_eq!(response["usage"]["prompt_tokens"], 4, "16 bytes = 4 tokens");

    // Several prompts, n = 2 and echo.
    let response = sim
        .post_ok(
            "/v1/completions",
            json!({"model": MODEL, "prompt": ["aaaa", "bbbb"], "n": 2, "max_tokens": 2, "echo": true}),
        )
        .await;
    let choices = response["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let prefix = if i < 2 { "aaaa" } else { "bbbb" };
        assert!(choice["text"].as_str().unwrap().starts_with(prefix));
    }
    assert_eq!(response["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn chat_non_stream_shape_and_defaults() {
    let sim = start(Config::for_tests(MODEL)).await;
    let mut request = chat(MODEL, "hello");
    request["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    request["response_format"] = json!({"type": "json_object"});
    request["temperature"] = json!(0.2);
    let response = sim.post_ok("/v1/chat/completions", request.clone()).await;
    assert!(response["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(response["object"], "chat.completion");
    assert_eq!(response["model"], MODEL);
    assert!(response["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &response["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["tool_calls"], json!([]));
    // No max_tokens: the default length, ending as if the model emitted EOS.
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content.split(' ').count(), 16);
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &response["usage"];
    assert_eq!(usage["completion_tokens"], 16);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 16
    );
    // Deterministic: the same request gets the same text.
    let again = sim.post_ok("/v1/chat/completions", request).await;
    assert_eq!(again["choices"][0]["message"]["content"], content);

    // The X-Request-Id header names the response, as in vLLM.
    let response: Value = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .header("X-Request-Id", "abc123")
        .json(&chat(MODEL, "hi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["id"], "chatcmpl-abc123");

    // n > 1 gives distinct choices.
    let mut request = chat(MODEL, "several");
    request["n"] = json!(3);
    request["max_tokens"] = json!(6);
    let response = sim.post_ok("/v1/chat/completions", request).await;
    let choices = response["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert_ne!(
        choices[0]["message"]["content"],
        choices[1]["message"]["content"]
    );
    assert_eq!(response["usage"]["completion_tokens"], 18);

    // Context length is enforced: prompt plus completion.
    let mut request = chat(MODEL, "x");
    request["max_tokens"] = json!(4090);
    let response = sim.post("/v1/chat/completions", request).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "BadRequestError");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 4096"));
}

#[tokio::test]
async fn models_list_base_names_and_adapters() {
    let mut config = Config::for_tests("org/base-model");
    config.vllm.served_model_name = vec!["base".into(), "base-alias".into()];
    config.vllm.max_model_len = 8192;
    config.vllm.lora_modules = vec![
        LoraModule {
            name: "sql-lora".into(),
            path: "/adapters/sql".into(),
            base_model_name: None,
        },
        LoraModule {
            name: "other".into(),
            path: "/adapters/other".into(),
            base_model_name: Some("base-alias".into()),
        },
    ];
    let sim = start(config).await;
    let list: Value = sim.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["base", "base-alias", "sql-lora", "other"]);
    let base = &data[0];
    assert_eq!(base["object"], "model");
    assert_eq!(base["owned_by"], "vllm");
    assert_eq!(base["root"], "org/base-model");
    assert_eq!(base["parent"], Value::Null);
    assert_eq!(base["max_model_len"], 8192);
    assert_eq!(base["permission"][0]["object"], "model_permission");
    let adapter = &data[2];
    assert_eq!(adapter["root"], "/adapters/sql");
    assert_eq!(adapter["parent"], "base");
    assert_eq!(adapter["max_model_len"], Value::Null);
    assert_eq!(data[3]["parent"], "base-alias");

    // Every name is accepted; responses name the first served name or the adapter.
    let response = sim
        .post_ok("/v1/chat/completions", chat("base-alias", "x"))
        .await;
    assert_eq!(response["model"], "base");
    let response = sim
        .post_ok("/v1/chat/completions", chat("sql-lora", "x"))
        .await;
    assert_eq!(response["model"], "sql-lora");
    // The model field may be left out.
    let response = sim
        .post_ok(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(response["model"], "base");
}

#[tokio::test]
async fn unknown_model_is_404_with_vllm_error_body() {
    let sim = start(Config::for_tests(MODEL)).await;
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = if path.ends_with("chat/completions") {
            chat("nope", "x")
        } else {
            json!({"model": "nope", "prompt": "x"})
        };
        let response = sim.post(path, body).await;
        assert_eq!(response.status(), 404);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": {
                "message": "The model `nope` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404
            }})
        );
    }
    let response = sim.get("/v1/unknown").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"detail": "Not Found"})
    );
}

#[tokio::test]
async fn bad_json_is_400_with_vllm_error_body() {
    let sim = start(Config::for_tests(MODEL)).await;
    for body in [
        "{not json",
        r#"{"model": "test/model"}"#,
        r#"{"messages": "nope"}"#,
    ] {
        let response = sim
            .client
            .post(sim.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "Bad Request");
        assert_eq!(error["error"]["code"], 400);
        assert_eq!(error["error"]["param"], Value::Null);
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    // vLLM only takes application/json.
    let response = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body(chat(MODEL, "x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn embeddings_are_normalized_and_deterministic() {
    let mut config = Config::for_tests("embedder");
    config.vllm.runner = Some("pooling".into());
    config.sim.embedding_dim = 32;
    let sim = start(config).await;

    let response = sim
        .post_ok(
            "/v1/embeddings",
            json!({"model": "embedder", "input": ["first text", "second"]}),
        )
        .await;
    assert_eq!(response["object"], "list");
    assert!(response["id"].as_str().unwrap().starts_with("embd-"));
    let data = response["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let first: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(first.len(), 32);
    let norm: f64 = first.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[1]["index"], 1);
    assert_eq!(response["usage"]["prompt_tokens"], 3 + 2);
    assert_eq!(response["usage"]["completion_tokens"], 0);

    let single = sim
        .post_ok(
            "/v1/embeddings",
            json!({"model": "embedder", "input": "first text"}),
        )
        .await;
    assert_eq!(single["data"][0]["embedding"], data[0]["embedding"]);

    let tokens = sim
        .post_ok(
            "/v1/embeddings",
            json!({"input": [[1, 2, 3], [4]], "encoding_format": "base64", "dimensions": 8}),
        )
        .await;
    let encoded = tokens["data"][0]["embedding"].as_str().unwrap();
    // 8 f32 = 32 bytes = 44 base64 characters with padding.
    assert_eq!(encoded.len(), 44);
    assert_eq!(tokens["usage"]["prompt_tokens"], 4);

    // An embedding model does not chat, as in vLLM: the route does not exist.
    let response = sim
        .post("/v1/chat/completions", chat("embedder", "x"))
        .await;
    assert_eq!(response.status(), 404);
    // And a generative model does not embed.
    let generative = start(Config::for_tests(MODEL)).await;
    let response = generative
        .post("/v1/embeddings", json!({"input": "x"}))
        .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn health_version_and_api_key() {
    let mut config = Config::for_tests(MODEL);
    config.vllm.api_key = vec!["secret".into()];
    let sim = start(config).await;
    let health = sim.get("/health").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "");
    assert_eq!(sim.get("/version").await.status(), 200);
    // /health and /metrics stay open; /v1 needs the key.
    assert_eq!(sim.get("/metrics").await.status(), 200);
    let response = sim.post("/v1/chat/completions", chat(MODEL, "x")).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "Unauthorized"})
    );
    let response = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .bearer_auth("secret")
        .json(&chat(MODEL, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
