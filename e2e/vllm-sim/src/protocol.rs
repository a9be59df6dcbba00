//! OpenAI request and response bodies, shaped like vLLM's
//! `vllm/entrypoints/openai/protocol.py`.
//!
//! Requests are parsed leniently (unknown fields such as `top_p`,
//! `tools`' schema details or `response_format` are ignored, as vLLM ignores
//! what it does not use). Responses reproduce vLLM's field sets and its
//! serialisation choices: non-streaming bodies carry every field (nulls
//! included), chat stream chunks omit unset fields (`exclude_unset=True`),
//! completion stream chunks include them (`exclude_unset=False`), and the final
//! usage chunk omits nulls.

use serde::{Deserialize, Serialize, Serializer};

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// `POST /v1/chat/completions` body (the fields the simulator uses).
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    /// Model or adapter name; the first served model when absent (as vLLM does).
    #[serde(default)]
    pub model: Option<String>,
    /// Conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Deprecated spelling of `max_completion_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Output token limit; wins over `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Choices to generate.
    #[serde(default)]
    pub n: Option<u32>,
    /// Sampling temperature: only validated, as vLLM validates it.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Tool definitions: only rendered into the prompt (they cost tokens).
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// Request id used in the response id when no `X-Request-Id` header is sent.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// Text or content parts; null for assistant tool-call messages.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Assistant tool calls, rendered into the prompt.
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
}

/// Message content: a string or a list of typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Multi-part content.
    Parts(Vec<ContentPart>),
}

/// One part of multi-part content.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// `text`, `image_url`, `input_audio`, ...
    #[serde(rename = "type", default)]
    pub part_type: String,
    /// Text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `stream_options`. Like vLLM, `include_usage` defaults to true once the
/// object is present: `"stream_options": {}` asks for the usage chunk.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with usage and no choices.
    #[serde(default)]
    pub include_usage: Option<bool>,
    /// Put usage in every chunk.
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Model or adapter name.
    #[serde(default)]
    pub model: Option<String>,
    /// One or more prompts, as text or token ids.
    pub prompt: PromptInput,
    /// Output token limit.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Choices per prompt.
    #[serde(default)]
    pub n: Option<u32>,
    /// Sampling temperature: only validated, as vLLM validates it.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Prepend the prompt to the output.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Request id used in the response id when no `X-Request-Id` header is sent.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A prompt or embedding input: text, texts, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One token id list.
    Tokens(Vec<u32>),
    /// Several token id lists.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    /// Model name.
    #[serde(default)]
    pub model: Option<String>,
    /// What to embed.
    pub input: PromptInput,
    /// `float` (default) or `base64` (little-endian f32, what the OpenAI Python
    /// client asks for by default).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Truncate vectors to this many dimensions (then re-normalise).
    #[serde(default)]
    pub dimensions: Option<usize>,
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// Serialises as JSON `null`; `Option<JsonNull>` with `skip_serializing_if`
/// gives a field that is either absent or null, as pydantic's exclude_unset does.
#[derive(Debug, Clone, Copy)]
pub struct JsonNull;

impl Serialize for JsonNull {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_none()
    }
}

/// Token accounting with every field (non-streaming bodies, completion chunks).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Prompt plus completion tokens.
    pub total_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens, with `--enable-prompt-tokens-details`.
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// Usage without null fields (the final usage chunk of a stream).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CompactUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Prompt plus completion tokens.
    pub total_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens, with `--enable-prompt-tokens-details`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl From<Usage> for CompactUsage {
    fn from(usage: Usage) -> Self {
        CompactUsage {
            prompt_tokens: usage.prompt_tokens,
            total_tokens: usage.total_tokens,
            completion_tokens: usage.completion_tokens,
            prompt_tokens_details: usage.prompt_tokens_details,
        }
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u64,
}

/// Chat stream chunk (`object: chat.completion.chunk`).
#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    /// `chatcmpl-...`, the same for every chunk of a response.
    pub id: &'a str,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: &'a str,
    /// One choice, or none in the usage chunk.
    pub choices: &'a [ChatChunkChoice<'a>],
    /// Usage chunk or continuous usage only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompactUsage>,
}

/// One choice of a chat chunk.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice<'a> {
    /// Choice index.
    pub index: u32,
    /// New text.
    pub delta: Delta<'a>,
    /// Always null.
    pub logprobs: Option<JsonNull>,
    /// Set on the last token's chunk.
    pub finish_reason: Option<&'static str>,
    /// Present (null) only on the last chunk, as in vLLM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<JsonNull>,
}

/// `delta` of a chat chunk.
#[derive(Debug, Serialize)]
pub struct Delta<'a> {
    /// `assistant` on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Token text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

/// Completion stream chunk (`object: text_completion`).
#[derive(Debug, Serialize)]
pub struct CompletionChunk<'a> {
    /// `cmpl-...`.
    pub id: &'a str,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: &'a str,
    /// One choice.
    pub choices: &'a [CompletionChunkChoice<'a>],
    /// Null unless continuous usage was asked for.
    pub usage: Option<Usage>,
}

/// One choice of a completion chunk.
#[derive(Debug, Serialize)]
pub struct CompletionChunkChoice<'a> {
    /// Choice index.
    pub index: u32,
    /// New text.
    pub text: &'a str,
    /// Always null.
    pub logprobs: Option<JsonNull>,
    /// Set on the last token's chunk.
    pub finish_reason: Option<&'static str>,
    /// Always null.
    pub stop_reason: Option<JsonNull>,
}

/// The last chunk of a stream that asked for usage: no choices.
#[derive(Debug, Serialize)]
pub struct UsageChunk<'a> {
    /// Response id.
    pub id: &'a str,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: &'a str,
    /// Always empty.
    pub choices: [(); 0],
    /// Totals over all choices.
    pub usage: CompactUsage,
}

/// Non-streaming chat response.
#[derive(Debug, Serialize)]
pub struct ChatCompletionResponse<'a> {
    /// `chatcmpl-...`.
    pub id: &'a str,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: &'a str,
    /// Generated choices.
    pub choices: Vec<ChatChoice>,
    /// Always null.
    pub service_tier: Option<JsonNull>,
    /// Always null.
    pub system_fingerprint: Option<JsonNull>,
    /// Token accounting.
    pub usage: Usage,
    /// Always null.
    pub prompt_logprobs: Option<JsonNull>,
    /// Always null.
    pub kv_transfer_params: Option<JsonNull>,
}

/// One non-streaming chat choice.
#[derive(Debug, Serialize)]
pub struct ChatChoice {
    /// Choice index.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// Always null.
    pub logprobs: Option<JsonNull>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Always null.
    pub stop_reason: Option<JsonNull>,
}

/// `message` of a chat choice.
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// Generated text.
    pub content: String,
    /// Always null.
    pub refusal: Option<JsonNull>,
    /// Always null.
    pub annotations: Option<JsonNull>,
    /// Always null.
    pub audio: Option<JsonNull>,
    /// Always null.
    pub function_call: Option<JsonNull>,
    /// Always empty.
    pub tool_calls: [(); 0],
    /// Always null.
    pub reasoning_content: Option<JsonNull>,
}

/// Non-streaming completion response.
#[derive(Debug, Serialize)]
pub struct CompletionResponse<'a> {
    /// `cmpl-...`.
    pub id: &'a str,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: &'a str,
    /// Generated choices.
    pub choices: Vec<CompletionChoice>,
    /// Always null.
    pub service_tier: Option<JsonNull>,
    /// Always null.
    pub system_fingerprint: Option<JsonNull>,
    /// Token accounting.
    pub usage: Usage,
    /// Always null.
    pub kv_transfer_params: Option<JsonNull>,
}

/// One non-streaming completion choice.
#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    /// Choice index (prompt index * n + sample index).
    pub index: u32,
    /// Generated text (after the prompt with `echo`).
    pub text: String,
    /// Always null.
    pub logprobs: Option<JsonNull>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Always null.
    pub stop_reason: Option<JsonNull>,
    /// Always null.
    pub prompt_logprobs: Option<JsonNull>,
}

/// `/v1/embeddings` response.
#[derive(Debug, Serialize)]
pub struct EmbeddingResponse<'a> {
    /// `embd-...`.
    pub id: &'a str,
    /// Always `list`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: &'a str,
    /// One entry per input.
    pub data: Vec<EmbeddingData>,
    /// Token accounting (completion_tokens is 0).
    pub usage: Usage,
}

/// One embedding.
#[derive(Debug, Serialize)]
pub struct EmbeddingData {
    /// Input index.
    pub index: u32,
    /// Always `embedding`.
    pub object: &'static str,
    /// Floats, or a base64 string of little-endian f32.
    pub embedding: EmbeddingVector,
}

/// An embedding in the requested encoding.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: float`.
    Float(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// `/v1/models` response.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// Served names, then adapters.
    pub data: Vec<ModelCard>,
}

/// One model of `/v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelCard {
    /// Name to put in requests.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Always `vllm`.
    pub owned_by: &'static str,
    /// Model path for base models, adapter path for LoRA adapters.
    pub root: String,
    /// Null for base models; the base model name for adapters.
    pub parent: Option<String>,
    /// Context length for base models; null for adapters.
    pub max_model_len: Option<u64>,
    /// One permissive permission object.
    pub permission: Vec<ModelPermission>,
}

/// vLLM's (constant) permission object.
#[derive(Debug, Serialize)]
pub struct ModelPermission {
    /// `modelperm-...`.
    pub id: String,
    /// Always `model_permission`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// false.
    pub allow_create_engine: bool,
    /// true.
    pub allow_sampling: bool,
    /// true.
    pub allow_logprobs: bool,
    /// false.
    pub allow_search_indices: bool,
    /// true.
    pub allow_view: bool,
    /// false.
    pub allow_fine_tuning: bool,
    /// `*`.
    pub organization: &'static str,
    /// null.
    pub group: Option<JsonNull>,
    /// false.
    pub is_blocking: bool,
}

impl ModelPermission {
    /// The permission vLLM attaches to every card.
    pub fn new(created: u64) -> Self {
        ModelPermission {
            id: format!("modelperm-{}", uuid::Uuid::new_v4().simple()),
            object: "model_permission",
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*",
            group: None,
            is_blocking: false,
        }
    }
}

/// vLLM's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorInfo,
}

/// Inside [`ErrorResponse`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// What went wrong.
    pub message: String,
    /// `BadRequestError`, `NotFoundError`, `InternalServerError`, `Bad Request`, ...
    #[serde(rename = "type")]
    pub error_type: String,
    /// Offending request field, if known.
    pub param: Option<String>,
    /// HTTP status code.
    pub code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunk_omits_unset_fields() {
        let choices = [ChatChunkChoice {
            index: 0,
            delta: Delta {
                role: Some("assistant"),
                content: Some(""),
            },
            logprobs: None,
            finish_reason: None,
            stop_reason: None,
        }];
        let chunk = ChatChunk {
            id: "chatcmpl-1",
            object: "chat.completion.chunk",
            created: 7,
            model: "m",
            choices: &choices,
            usage: None,
        };
        assert_eq!(
            serde_json::to_string(&chunk).unwrap(),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
        );
    }

    #[test]
    fn usage_chunk_has_empty_choices_and_no_nulls() {
        let chunk = UsageChunk {
            id: "cmpl-1",
            object: "text_completion",
            created: 7,
            model: "m",
            choices: [],
            usage: CompactUsage {
                prompt_tokens: 3,
                total_tokens: 5,
                completion_tokens: 2,
                prompt_tokens_details: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&chunk).unwrap(),
            r#"{"id":"cmpl-1","object":"text_completion","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}"#
        );
    }

    #[test]
    fn prompt_input_shapes() {
        let parse = |json: &str| serde_json::from_str::<PromptInput>(json).unwrap();
        assert!(matches!(parse(r#""a""#), PromptInput::Text(_)));
        assert!(matches!(parse(r#"["a","b"]"#), PromptInput::Texts(_)));
        assert!(matches!(parse("[1,2]"), PromptInput::Tokens(_)));
        assert!(matches!(parse("[[1],[2,3]]"), PromptInput::TokenLists(_)));
    }
}
