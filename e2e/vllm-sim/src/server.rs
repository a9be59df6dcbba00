//! HTTP layer: one [`build_router`] used by `main`, by [`crate::spawn`] and by tests.
//!
//! Handlers parse and validate (pure functions over the request types), then
//! hand a [`Generation`] to the engine. Routes, as `vllm serve` has them:
//! `GET /health`, `GET /ping`, `GET /version`, `GET /metrics`,
//! `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`,
//! `POST /v1/embeddings`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::config::{Config, ConfigError, ModelKind};
use crate::engine::{Engine, Run, Timing};
use crate::error::ApiError;
use crate::faults::Faults;
use crate::metrics::{FinishReason, Metrics, MetricsSpec};
use crate::protocol::{
    ChatCompletionRequest, CompletionRequest, EmbeddingData, EmbeddingRequest, EmbeddingResponse,
    EmbeddingVector, ModelCard, ModelList, ModelPermission, PromptInput, StreamOptions, Usage,
};
use crate::sse::{self, Flavor, Generation, PromptPlan};
use crate::tokenizer::{prompt_seed, render_chat, tokenize};

/// The vLLM version `/version` reports.
pub const SIMULATED_VLLM_VERSION: &str = "0.10.1";

/// Largest request body accepted (vLLM sets none; long-context prompts are big).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Most choices one request may ask for.
const MAX_N: u32 = 128;

/// A LoRA adapter served as a model.
#[derive(Debug, Clone)]
struct Adapter {
    name: Arc<str>,
    path: String,
    parent: String,
}

/// What the server answers to, from the configuration.
#[derive(Debug)]
pub struct Catalog {
    kind: ModelKind,
    model_path: String,
    served_names: Vec<Arc<str>>,
    adapters: Vec<Adapter>,
    max_model_len: u64,
}

/// The model a request resolved to.
#[derive(Debug, Clone)]
struct Target {
    /// Name written in responses: the first served name, or the adapter name.
    model: Arc<str>,
    adapter: Option<Arc<str>>,
}

impl Catalog {
    fn new(config: &Config) -> Self {
        let served_names: Vec<Arc<str>> = config
            .served_model_names()
            .into_iter()
            .map(Arc::from)
            .collect();
        let first = served_names
            .first()
            .map(|name| name.to_string())
            .unwrap_or_else(|| config.model_path().to_owned());
        let adapters = config
            .vllm
            .lora_modules
            .iter()
            .map(|module| Adapter {
                name: Arc::from(module.name.as_str()),
                path: module.path.clone(),
                parent: module
                    .base_model_name
                    .clone()
                    .unwrap_or_else(|| first.clone()),
            })
            .collect();
        Catalog {
            kind: config.model_kind(),
            model_path: config.model_path().to_owned(),
            served_names,
            adapters,
            max_model_len: config.vllm.max_model_len,
        }
    }

    /// Resolves the `model` field; absent means the base model, as in vLLM.
    fn resolve(&self, requested: Option<&str>) -> Result<Target, ApiError> {
        let base = || {
            self.served_names
                .first()
                .cloned()
                .unwrap_or_else(|| Arc::from(self.model_path.as_str()))
        };
        let Some(name) = requested else {
            return Ok(Target {
                model: base(),
                adapter: None,
            });
        };
        if self
            .served_names
            .iter()
            .any(|served| served.as_ref() == name)
        {
            return Ok(Target {
                model: base(),
                adapter: None,
            });
        }
        if let Some(adapter) = self.adapters.iter().find(|a| a.name.as_ref() == name) {
            return Ok(Target {
                model: Arc::clone(&adapter.name),
                adapter: Some(Arc::clone(&adapter.name)),
            });
        }
        Err(ApiError::ModelNotFound(name.to_owned()))
    }

    /// vLLM registers only the routes its runner serves: the others are
    /// FastAPI's 404 `{"detail": "Not Found"}`.
    fn require(&self, kind: ModelKind) -> Result<(), ApiError> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(ApiError::RouteNotFound)
        }
    }
}

/// Per-response options from the configuration.
#[derive(Debug, Clone, Copy)]
struct Options {
    default_max_tokens: u64,
    prompt_tokens_details: bool,
    force_include_usage: bool,
    embedding_dim: usize,
}

/// Counts for tests and benchmarks, read without scraping /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests holding a slot.
    pub running: usize,
    /// Requests queued.
    pub waiting: usize,
    /// Requests finished with `stop` or `length`.
    pub finished: u64,
    /// Requests aborted (client gone, stream cut).
    pub aborted: u64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_cache_hits: u64,
}

/// Shared state of one simulated server.
#[derive(Debug)]
pub struct SimState {
    engine: Arc<Engine>,
    catalog: Catalog,
    options: Options,
    api_keys: Vec<String>,
    ready_at: Instant,
    ready: AtomicBool,
}

impl SimState {
    /// Builds the state; the startup delay starts now.
    pub fn new(config: &Config) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let catalog = Catalog::new(config);
        let metrics = Metrics::new(&MetricsSpec {
            model_name: catalog
                .served_names
                .first()
                .map(|name| name.to_string())
                .unwrap_or_default(),
            max_lora: config.lora_enabled().then_some(config.vllm.max_loras),
            max_model_len: config.vllm.max_model_len,
            kv_cache_blocks: config.kv_cache_blocks(),
            block_size: config.vllm.block_size,
            prefix_caching: config.prefix_caching(),
        });
        let timing = Timing {
            ttft: config.ttft(),
            prefill_per_token: crate::config::millis(config.sim.prefill_ms_per_token),
            itl: config.itl(),
        };
        let prefix_cache_blocks = config
            .prefix_caching()
            .then(|| usize::try_from(config.kv_cache_blocks()).unwrap_or(usize::MAX));
        let engine = Engine::new(
            timing,
            config.vllm.max_num_seqs,
            config.vllm.block_size,
            prefix_cache_blocks,
            metrics,
            Faults::new(config.sim.error_rate, config.sim.drop_rate),
        );
        let startup = std::time::Duration::from_millis(config.sim.startup_delay_ms);
        Ok(Arc::new(SimState {
            engine: Arc::new(engine),
            catalog,
            options: Options {
                default_max_tokens: config.sim.default_max_tokens,
                prompt_tokens_details: config.vllm.enable_prompt_tokens_details,
                force_include_usage: config.vllm.enable_force_include_usage,
                embedding_dim: config.sim.embedding_dim,
            },
            api_keys: config.vllm.api_key.clone(),
            ready_at: Instant::now() + startup,
            ready: AtomicBool::new(startup.is_zero()),
        }))
    }

    /// The engine (scheduler, metrics).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Current counts.
    pub fn stats(&self) -> SimStats {
        let metrics = &self.engine.metrics;
        SimStats {
            running: self.engine.scheduler.running(),
            waiting: self.engine.scheduler.waiting(),
            finished: metrics.request_success(FinishReason::Stop)
                + metrics.request_success(FinishReason::Length),
            aborted: metrics.request_success(FinishReason::Abort),
            prompt_tokens: metrics.prompt_tokens.get(),
            generation_tokens: metrics.generation_tokens.get(),
            prefix_cache_queries: metrics.prefix_cache_queries.get(),
            prefix_cache_hits: metrics.prefix_cache_hits.get(),
        }
    }

    /// Whether the startup delay is over.
    pub fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let ready = Instant::now() >= self.ready_at;
        if ready {
            self.ready.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// Output length and finish reason for a request asking for `requested`
    /// tokens after a prompt of `prompt_tokens`, checked against the context.
    fn output_plan(
        &self,
        requested: Option<u64>,
        prompt_tokens: u64,
    ) -> Result<(u64, FinishReason), ApiError> {
        let max_len = self.catalog.max_model_len;
        match requested {
            Some(max_tokens) => {
                if max_tokens > max_len {
                    return Err(ApiError::bad_request(
                        format!(
                            "max_tokens={max_tokens} cannot be greater than max_model_len={max_len}. \
                             Please request fewer output tokens. (parameter=max_tokens, \
                             value={max_tokens})"
                        ),
                        Some("max_tokens"),
                    ));
                }
                if prompt_tokens.saturating_add(max_tokens) > max_len {
                    return Err(ApiError::bad_request(
                        format!(
                            "This model's maximum context length is {max_len} tokens. However, you \
                             requested {} tokens ({prompt_tokens} in the messages, {max_tokens} in \
                             the completion). Please reduce the length of the messages or completion.",
                            prompt_tokens + max_tokens
                        ),
                        None,
                    ));
                }
                Ok((max_tokens, FinishReason::Length))
            }
            None => {
                if prompt_tokens >= max_len {
                    return Err(ApiError::bad_request(
                        format!(
                            "This model's maximum context length is {max_len} tokens. However, you \
                             requested {prompt_tokens} tokens in the messages, Please reduce the \
                             length of the messages."
                        ),
                        None,
                    ));
                }
                let room = max_len - prompt_tokens;
                if self.options.default_max_tokens <= room {
                    // The model "chose" to stop: EOS before any limit.
                    Ok((self.options.default_max_tokens, FinishReason::Stop))
                } else {
                    Ok((room, FinishReason::Length))
                }
            }
        }
    }

    /// `(include_usage, continuous_usage)` for a request.
    fn usage_mode(
        &self,
        stream: bool,
        options: Option<&StreamOptions>,
    ) -> Result<(bool, bool), ApiError> {
        match options {
            Some(_) if !stream => Err(ApiError::bad_request(
                "Stream options can only be defined when `stream=True`.",
                Some("stream_options"),
            )),
            Some(options) => {
                let include =
                    options.include_usage.unwrap_or(true) || self.options.force_include_usage;
                Ok((
                    include,
                    include && options.continuous_usage_stats.unwrap_or(false),
                ))
            }
            None => Ok((stream && self.options.force_include_usage, false)),
        }
    }
}

/// The router of one simulated server.
pub fn build_router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), gate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Startup delay (503 everywhere) and API keys (401 on /v1 routes).
async fn gate(State(state): State<Arc<SimState>>, request: Request, next: Next) -> Response {
    if !state.is_ready() {
        if request.uri().path() == "/health" {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        return ApiError::Starting.into_response();
    }
    // After SIGTERM vLLM still answers, but refuses new work with a 500.
    if request.method() == axum::http::Method::POST
        && request.uri().path().starts_with("/v1/")
        && !state.engine.lifecycle.accepts_requests()
    {
        return ApiError::ShuttingDown.into_response();
    }
    if !state.api_keys.is_empty() && request.uri().path().starts_with("/v1") {
        let authorized = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|token| state.api_keys.iter().any(|key| key == token));
        if !authorized {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": SIMULATED_VLLM_VERSION }))
}

/// FastAPI's answer to a known path with the wrong method.
async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

async fn metrics(State(state): State<Arc<SimState>>) -> Response {
    let text = state.engine.metrics.render(&state.engine.scheduler);
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn models(State(state): State<Arc<SimState>>) -> Json<ModelList> {
    let created = unix_now();
    let catalog = &state.catalog;
    let mut data: Vec<ModelCard> = catalog
        .served_names
        .iter()
        .map(|name| ModelCard {
            id: name.to_string(),
            object: "model",
            created,
            owned_by: "vllm",
            root: catalog.model_path.clone(),
            parent: None,
            max_model_len: Some(catalog.max_model_len),
            permission: vec![ModelPermission::new(created)],
        })
        .collect();
    data.extend(catalog.adapters.iter().map(|adapter| ModelCard {
        id: adapter.name.to_string(),
        object: "model",
        created,
        owned_by: "vllm",
        root: adapter.path.clone(),
        parent: Some(adapter.parent.clone()),
        max_model_len: None,
        permission: vec![ModelPermission::new(created)],
    }));
    Json(ModelList {
        object: "list",
        data,
    })
}

async fn chat_completions(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ChatCompletionRequest = parse_json(&headers, &body)?;
    let target = state.catalog.resolve(request.model.as_deref())?;
    state.catalog.require(ModelKind::Generate)?;
    check_temperature(request.temperature)?;
    let tokens = tokenize(&render_chat(&request.messages, request.tools.as_ref()));
    let requested = request.max_completion_tokens.or(request.max_tokens);
    let id = format!("chatcmpl-{}", request_id(&headers, request.request_id));
    let prompt = PromptPlan {
        seed: prompt_seed(&tokens),
        tokens,
        echo: None,
    };
    let stream = request.stream.unwrap_or(false);
    let generation = plan(
        &state,
        Flavor::Chat,
        id,
        target,
        vec![prompt],
        request.n,
        requested,
        stream,
        request.stream_options.as_ref(),
    )?;
    respond(&state, generation, stream).await
}

async fn completions(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_json(&headers, &body)?;
    let target = state.catalog.resolve(request.model.as_deref())?;
    state.catalog.require(ModelKind::Generate)?;
    check_temperature(request.temperature)?;
    let echo = request.echo.unwrap_or(false);
    let prompts = prompt_token_lists(request.prompt)?
        .into_iter()
        .map(|prompt| PromptPlan {
            seed: prompt_seed(&prompt.tokens),
            echo: echo.then(|| prompt.text.unwrap_or_else(|| detokenize(&prompt.tokens))),
            tokens: prompt.tokens,
        })
        .collect();
    let id = format!("cmpl-{}", request_id(&headers, request.request_id));
    let stream = request.stream.unwrap_or(false);
    let generation = plan(
        &state,
        Flavor::Completion,
        id,
        target,
        prompts,
        request.n,
        request.max_tokens,
        stream,
        request.stream_options.as_ref(),
    )?;
    respond(&state, generation, stream).await
}

/// vLLM's sampling-parameter check, in its words.
fn check_temperature(temperature: Option<f64>) -> Result<(), ApiError> {
    match temperature {
        Some(t) if t < 0.0 || t.is_nan() => Err(ApiError::bad_request(
            format!(
                "temperature must be non-negative, got {t:?}. (parameter=temperature, value={t:?})"
            ),
            Some("temperature"),
        )),
        _ => Ok(()),
    }
}

/// Validates the common generation fields and builds the plan.
#[allow(clippy::too_many_arguments)]
fn plan(
    state: &SimState,
    flavor: Flavor,
    id: String,
    target: Target,
    prompts: Vec<PromptPlan>,
    n: Option<u32>,
    requested: Option<u64>,
    stream: bool,
    stream_options: Option<&StreamOptions>,
) -> Result<Generation, ApiError> {
    let n = n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::bad_request(
            format!("n must be between 1 and {MAX_N}, got {n}."),
            Some("n"),
        ));
    }
    let (include_usage, continuous_usage) = state.usage_mode(stream, stream_options)?;
    let longest = prompts
        .iter()
        .map(|p| p.tokens.len() as u64)
        .max()
        .unwrap_or(0);
    let (max_tokens, finish) = state.output_plan(requested, longest)?;
    if state.engine.faults.inject_error() {
        return Err(ApiError::InjectedFailure);
    }
    let drop_after = if stream {
        state.engine.faults.drop_after(max_tokens)
    } else {
        None
    };
    Ok(Generation {
        flavor,
        id,
        created: unix_now(),
        model: target.model,
        adapter: target.adapter,
        prompts,
        n,
        max_tokens,
        finish,
        include_usage,
        continuous_usage,
        prompt_tokens_details: state.options.prompt_tokens_details,
        drop_after,
    })
}

async fn respond(
    state: &SimState,
    generation: Generation,
    stream: bool,
) -> Result<Response, ApiError> {
    let engine = Arc::clone(&state.engine);
    if stream {
        let body = Body::from_stream(sse::stream(engine, generation));
        Ok((
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            )],
            body,
        )
            .into_response())
    } else {
        let body = sse::complete(engine, generation).await?;
        Ok((
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response())
    }
}

async fn embeddings(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = parse_json(&headers, &body)?;
    let target = state.catalog.resolve(request.model.as_deref())?;
    state.catalog.require(ModelKind::Embed)?;
    let inputs: Vec<Vec<u32>> = prompt_token_lists(request.input)?
        .into_iter()
        .map(|input| input.tokens)
        .collect();
    let max_len = state.catalog.max_model_len;
    if let Some(too_long) = inputs.iter().find(|t| t.len() as u64 > max_len) {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {max_len} tokens. However, you requested \
                 {} tokens in the input for embedding generation. Please reduce the length of \
                 the input.",
                too_long.len()
            ),
            Some("input"),
        ));
    }
    let full_dim = state.options.embedding_dim;
    let dim = request.dimensions.unwrap_or(full_dim);
    if dim == 0 || dim > full_dim {
        return Err(ApiError::bad_request(
            format!("dimensions must be between 1 and {full_dim}, got {dim}."),
            Some("dimensions"),
        ));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("encoding_format must be 'float' or 'base64', got '{other}'."),
                Some("encoding_format"),
            ))
        }
    };
    if state.engine.faults.inject_error() {
        return Err(ApiError::InjectedFailure);
    }

    let prompt_tokens: u64 = inputs.iter().map(|t| t.len() as u64).sum();
    let mut run = Run::new(
        Arc::clone(&state.engine),
        prompt_tokens,
        inputs.len() as u64,
    );
    run.schedule(target.adapter.clone()).await?;
    // Pooling models in vLLM do not use the prefix cache.
    run.prefill(&inputs, target.adapter.as_deref(), false).await;
    run.finish(FinishReason::Stop);

    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, tokens)| {
            let vector = embed(tokens, full_dim, dim);
            EmbeddingData {
                index: index as u32,
                object: "embedding",
                embedding: if base64 {
                    EmbeddingVector::Base64(encode_base64_f32(&vector))
                } else {
                    EmbeddingVector::Float(vector)
                },
            }
        })
        .collect();
    let id = format!("embd-{}", request_id(&headers, None));
    Ok(Json(EmbeddingResponse {
        id: &id,
        object: "list",
        created: unix_now(),
        model: &target.model,
        data,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
            completion_tokens: 0,
            prompt_tokens_details: None,
        },
    })
    .into_response())
}

/// Parses a JSON body; like vLLM, only `application/json` is accepted.
fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let media_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    if media_type.as_deref() != Some("application/json") {
        return Err(ApiError::InvalidRequest(
            "Unsupported Media Type: Only 'application/json' is allowed".to_owned(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::InvalidRequest(format!("Invalid request body: {err}")))
}

/// One prompt as token ids, with its text when it was given as text.
struct PromptTokens {
    tokens: Vec<u32>,
    text: Option<String>,
}

/// Prompts (or embedding inputs) as token lists.
fn prompt_token_lists(input: PromptInput) -> Result<Vec<PromptTokens>, ApiError> {
    let from_text = |text: String| PromptTokens {
        tokens: tokenize(&text),
        text: Some(text),
    };
    let from_tokens = |tokens: Vec<u32>| PromptTokens { tokens, text: None };
    let lists: Vec<PromptTokens> = match input {
        PromptInput::Text(text) => vec![from_text(text)],
        PromptInput::Texts(texts) => texts.into_iter().map(from_text).collect(),
        PromptInput::Tokens(tokens) => vec![from_tokens(tokens)],
        PromptInput::TokenLists(lists) => lists.into_iter().map(from_tokens).collect(),
    };
    if lists.is_empty()
        || lists
            .iter()
            .any(|p| p.tokens.is_empty() && p.text.is_none())
    {
        return Err(ApiError::bad_request(
            "Prompt must be a non-empty string, list of strings or list of token ids.",
            Some("prompt"),
        ));
    }
    Ok(lists)
}

/// Inverse of [`tokenize`] for the simulator's own ids; other ids give junk text.
fn detokenize(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|token| token.to_le_bytes())
        .filter(|byte| *byte != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `X-Request-Id` header, else the body's `request_id`, else a fresh uuid (hex).
fn request_id(headers: &HeaderMap, from_body: Option<String>) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(from_body)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unit vector derived from the tokens: the first `dim` of `full_dim`
/// pseudo-random components, re-normalised (so shorter vectors are prefixes of
/// longer ones up to scale, like Matryoshka embeddings).
pub fn embed(tokens: &[u32], full_dim: usize, dim: usize) -> Vec<f32> {
    let mut state = prompt_seed(tokens);
    let mut vector: Vec<f32> = (0..full_dim.min(dim))
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = state;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for value in &mut vector {
            *value /= norm;
        }
    }
    vector
}

/// Standard base64 of the little-endian f32 bytes.
pub fn encode_base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_values() {
        // 1.0f32 = 00 00 80 3f
        assert_eq!(encode_base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64_f32(&[]), "");
    }

    #[test]
    fn embeddings_are_unit_and_deterministic() {
        let a = embed(&[1, 2, 3], 64, 64);
        assert_eq!(a.len(), 64);
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(a, embed(&[1, 2, 3], 64, 64));
        assert_ne!(a, embed(&[1, 2, 4], 64, 64));
        assert_eq!(embed(&[1, 2, 3], 64, 8).len(), 8);
    }

    #[test]
    fn detokenize_inverts_tokenize() {
        assert_eq!(detokenize(&tokenize("hello world")), "hello world");
    }

    #[test]
    fn adapters_resolve_and_unknown_models_do_not() {
        let mut config = Config::for_tests("base");
        config.vllm.served_model_name = vec!["alias-a".into(), "alias-b".into()];
        config.vllm.lora_modules = vec![crate::config::LoraModule {
            name: "sql".into(),
            path: "/sql".into(),
            base_model_name: None,
        }];
        let catalog = Catalog::new(&config);
        assert_eq!(
            catalog.resolve(Some("alias-b")).unwrap().model.as_ref(),
            "alias-a"
        );
        assert_eq!(catalog.resolve(None).unwrap().model.as_ref(), "alias-a");
        let adapter = catalog.resolve(Some("sql")).unwrap();
        assert_eq!(adapter.adapter.as_deref(), Some("sql"));
        assert!(matches!(
            catalog.resolve(Some("base")),
            Err(ApiError::ModelNotFound(_))
        ));
    }
}
