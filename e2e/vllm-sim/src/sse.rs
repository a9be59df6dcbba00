//! Generation requests: streaming (server-sent events) and non-streaming.
//!
//! One [`Generation`] describes a chat or completion request after validation;
//! [`stream`] and [`complete`] drive it through the engine and write vLLM's
//! frames. Stream layout, as vLLM writes it:
//!
//! ```text
//! data: {chunk with delta {"role":"assistant","content":""}}\n\n   (chat only)
//! data: {chunk with one token}\n\n                                  (one per token)
//! data: {last token's chunk, finish_reason set, stop_reason null}\n\n
//! data: {"choices":[], "usage":{...}}\n\n       (only if stream_options.include_usage)
//! data: [DONE]\n\n
//! ```
//!
//! With a zero inter-token latency every frame is written into one buffer and
//! sent as a single body chunk (still separate SSE frames); otherwise frames are
//! flushed as each token comes due.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;

use crate::engine::{Engine, Run};
use crate::error::ApiError;
use crate::lifecycle::Aborted;
use crate::metrics::FinishReason;
use crate::protocol::{
    AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletionResponse, CompactUsage,
    CompletionChoice, CompletionChunk, CompletionChunkChoice, CompletionResponse, Delta, JsonNull,
    PromptTokensDetails, Usage, UsageChunk,
};
use crate::tokenizer::output_token;

/// Chat or legacy completions: decides object names and chunk shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

impl Flavor {
    fn chunk_object(self) -> &'static str {
        match self {
            Flavor::Chat => "chat.completion.chunk",
            Flavor::Completion => "text_completion",
        }
    }
}

/// One prompt of a generation request.
#[derive(Debug, Clone)]
pub struct PromptPlan {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Seed of the generated text.
    pub seed: u64,
    /// Text to prepend to the output (`echo` on completions).
    pub echo: Option<String>,
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Chat or completion.
    pub flavor: Flavor,
    /// Response id (`chatcmpl-...` / `cmpl-...`).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name written in responses.
    pub model: Arc<str>,
    /// LoRA adapter, if the request selected one.
    pub adapter: Option<Arc<str>>,
    /// Prompts (completions may send several).
    pub prompts: Vec<PromptPlan>,
    /// Samples per prompt.
    pub n: u32,
    /// Tokens to generate per choice.
    pub max_tokens: u64,
    /// Finish reason of every choice.
    pub finish: FinishReason,
    /// Send the final usage chunk.
    pub include_usage: bool,
    /// Put usage in every chunk.
    pub continuous_usage: bool,
    /// Report cached prompt tokens in usage.
    pub prompt_tokens_details: bool,
    /// Cut the stream after this token (fault injection).
    pub drop_after: Option<u64>,
}

impl Generation {
    fn prompt_tokens(&self) -> u64 {
        self.prompts.iter().map(|p| p.tokens.len() as u64).sum()
    }

    fn choices(&self) -> u64 {
        self.prompts.len() as u64 * u64::from(self.n)
    }

    fn usage(&self, completion_tokens: u64, cached_tokens: u64) -> Usage {
        let prompt_tokens = self.prompt_tokens();
        Usage {
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            completion_tokens,
            // vLLM only reports details when something was cached.
            prompt_tokens_details: (self.prompt_tokens_details && cached_tokens > 0)
                .then_some(PromptTokensDetails { cached_tokens }),
        }
    }

    /// (choice index, prompt, sample index) for every choice, in vLLM's order.
    fn choice_list(&self) -> impl Iterator<Item = (u32, &PromptPlan, u32)> {
        let n = self.n;
        self.prompts
            .iter()
            .enumerate()
            .flat_map(move |(p, prompt)| {
                (0..n).map(move |sample| (p as u32 * n + sample, prompt, sample))
            })
    }

    fn token_ids(&self) -> Vec<Vec<u32>> {
        self.prompts.iter().map(|p| p.tokens.clone()).collect()
    }
}

/// Writes `data: {json}\n\n`.
fn write_frame<T: Serialize>(buffer: &mut Vec<u8>, value: &T) -> io::Result<()> {
    buffer.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *buffer, value).map_err(io::Error::other)?;
    buffer.extend_from_slice(b"\n\n");
    Ok(())
}

/// Writes one token (or final) chunk for one choice.
fn write_token_frame(
    buffer: &mut Vec<u8>,
    generation: &Generation,
    index: u32,
    text: &str,
    finish: Option<&'static str>,
    usage: Option<Usage>,
) -> io::Result<()> {
    match generation.flavor {
        Flavor::Chat => {
            let choices = [ChatChunkChoice {
                index,
                delta: Delta {
                    role: None,
                    // A final chunk after zero tokens carries an empty delta.
                    content: (finish.is_none() || !text.is_empty()).then_some(text),
                },
                logprobs: None,
                finish_reason: finish,
                stop_reason: finish.map(|_| JsonNull),
            }];
            write_frame(
                buffer,
                &ChatChunk {
                    id: &generation.id,
                    object: Flavor::Chat.chunk_object(),
                    created: generation.created,
                    model: &generation.model,
                    choices: &choices,
                    usage: usage.map(CompactUsage::from),
                },
            )
        }
        Flavor::Completion => {
            let choices = [CompletionChunkChoice {
                index,
                text,
                logprobs: None,
                finish_reason: finish,
                stop_reason: None,
            }];
            write_frame(
                buffer,
                &CompletionChunk {
                    id: &generation.id,
                    object: Flavor::Completion.chunk_object(),
                    created: generation.created,
                    model: &generation.model,
                    choices: &choices,
                    usage,
                },
            )
        }
    }
}

fn write_role_frame(
    buffer: &mut Vec<u8>,
    generation: &Generation,
    index: u32,
    usage: Option<Usage>,
) -> io::Result<()> {
    let choices = [ChatChunkChoice {
        index,
        delta: Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        logprobs: None,
        finish_reason: None,
        stop_reason: None,
    }];
    write_frame(
        buffer,
        &ChatChunk {
            id: &generation.id,
            object: Flavor::Chat.chunk_object(),
            created: generation.created,
            model: &generation.model,
            choices: &choices,
            usage: usage.map(CompactUsage::from),
        },
    )
}

/// Writes the frames of every choice for token `position`.
fn write_position(
    buffer: &mut Vec<u8>,
    generation: &Generation,
    position: u64,
    cached: u64,
) -> io::Result<()> {
    let last = position + 1 == generation.max_tokens;
    let finish = last.then_some(generation.finish.as_str());
    let usage = generation
        .continuous_usage
        .then(|| generation.usage(position + 1, cached));
    for (index, prompt, sample) in generation.choice_list() {
        let token = output_token(prompt.seed, sample, position);
        match (&prompt.echo, position) {
            (Some(echo), 0) => {
                let text = format!("{echo}{token}");
                write_token_frame(buffer, generation, index, &text, finish, usage)?;
            }
            _ => write_token_frame(buffer, generation, index, token, finish, usage)?,
        }
    }
    Ok(())
}

/// Streams a generation as server-sent events. Dropping the stream (client
/// gone) aborts the request in the engine.
pub fn stream(
    engine: Arc<Engine>,
    generation: Generation,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    async_stream::try_stream! {
        let mut run = Run::new(Arc::clone(&engine), generation.prompt_tokens(), generation.choices());
        let mut buffer: Vec<u8> = Vec::with_capacity(512);
        let lifecycle = &engine.lifecycle;
        // vLLM reports errors inside an open stream as an error frame, then `[DONE]`.
        let scheduled = match lifecycle.guard(run.schedule(generation.adapter.clone())).await {
            Ok(scheduled) => scheduled.map_err(ApiError::from),
            Err(Aborted) => Err(ApiError::EngineDead),
        };
        if let Err(err) = scheduled {
            write_frame(&mut buffer, &err.body())?;
            buffer.extend_from_slice(b"data: [DONE]\n\n");
            yield Bytes::from(buffer);
            return;
        }
        let Ok(cached) = lifecycle
            .guard(run.prefill(&generation.token_ids(), generation.adapter.as_deref(), true))
            .await
        else {
            write_frame(&mut buffer, &ApiError::EngineDead.body())?;
            buffer.extend_from_slice(b"data: [DONE]\n\n");
            yield Bytes::from(buffer);
            return;
        };

        if generation.flavor == Flavor::Chat {
            let usage = generation.continuous_usage.then(|| generation.usage(0, cached));
            for (index, _, _) in generation.choice_list() {
                write_role_frame(&mut buffer, &generation, index, usage)?;
            }
        }
        for position in 0..generation.max_tokens {
            if position > 0 && run.paced() {
                yield Bytes::from(std::mem::take(&mut buffer));
                if lifecycle.guard(run.wait_for_token(position)).await.is_err() {
                    write_frame(&mut buffer, &ApiError::EngineDead.body())?;
                    buffer.extend_from_slice(b"data: [DONE]\n\n");
                    yield Bytes::from(buffer);
                    return;
                }
            }
            write_position(&mut buffer, &generation, position, cached)?;
            run.emit(generation.choices());
            if generation.drop_after == Some(position) {
                yield Bytes::from(std::mem::take(&mut buffer));
                pause_before_cut().await;
                Err(io::Error::other("simulated connection drop (--sim-drop-rate)"))?;
            }
        }
        if generation.max_tokens == 0 {
            let finish = Some(generation.finish.as_str());
            let usage = generation.continuous_usage.then(|| generation.usage(0, cached));
            for (index, prompt, _) in generation.choice_list() {
                let text = prompt.echo.as_deref().unwrap_or("");
                write_token_frame(&mut buffer, &generation, index, text, finish, usage)?;
            }
            if generation.drop_after.is_some() {
                yield Bytes::from(std::mem::take(&mut buffer));
                pause_before_cut().await;
                Err(io::Error::other("simulated connection drop (--sim-drop-rate)"))?;
            }
        }

        // Finish before the last bytes leave, so a client that has read
        // `[DONE]` sees the request counted and its slot free.
        run.finish(generation.finish);
        if generation.include_usage {
            let usage = generation.usage(generation.max_tokens * generation.choices(), cached);
            write_frame(
                &mut buffer,
                &UsageChunk {
                    id: &generation.id,
                    object: generation.flavor.chunk_object(),
                    created: generation.created,
                    model: &generation.model,
                    choices: [],
                    usage: usage.into(),
                },
            )?;
        }
        buffer.extend_from_slice(b"data: [DONE]\n\n");
        yield Bytes::from(buffer);
    }
}

/// Before cutting a stream, give the server a moment to flush the frames
/// already yielded, so the client sees a partial stream rather than none.
/// Only the fault path pays this.
async fn pause_before_cut() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

/// Runs a generation to the end and builds the JSON response body.
pub async fn complete(engine: Arc<Engine>, generation: Generation) -> Result<Vec<u8>, ApiError> {
    let mut run = Run::new(
        Arc::clone(&engine),
        generation.prompt_tokens(),
        generation.choices(),
    );
    let lifecycle = &engine.lifecycle;
    let dead = |Aborted| ApiError::EngineDead;
    lifecycle
        .guard(run.schedule(generation.adapter.clone()))
        .await
        .map_err(dead)??;
    let cached = lifecycle
        .guard(run.prefill(&generation.token_ids(), generation.adapter.as_deref(), true))
        .await
        .map_err(dead)?;
    if generation.max_tokens > 1 {
        lifecycle
            .guard(run.wait_for_token(generation.max_tokens - 1))
            .await
            .map_err(dead)?;
    }
    run.emit(generation.max_tokens * generation.choices());
    run.finish(generation.finish);

    let usage = generation.usage(generation.max_tokens * generation.choices(), cached);
    let finish_reason = generation.finish.as_str();
    let text_of = |prompt: &PromptPlan, sample: u32| {
        let mut text = prompt.echo.clone().unwrap_or_default();
        for position in 0..generation.max_tokens {
            text.push_str(output_token(prompt.seed, sample, position));
        }
        text
    };
    let body = match generation.flavor {
        Flavor::Chat => serde_json::to_vec(&ChatCompletionResponse {
            id: &generation.id,
            object: "chat.completion",
            created: generation.created,
            model: &generation.model,
            choices: generation
                .choice_list()
                .map(|(index, prompt, sample)| ChatChoice {
                    index,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text_of(prompt, sample),
                        refusal: None,
                        annotations: None,
                        audio: None,
                        function_call: None,
                        tool_calls: [],
                        reasoning_content: None,
                    },
                    logprobs: None,
                    finish_reason,
                    stop_reason: None,
                })
                .collect(),
            service_tier: None,
            system_fingerprint: None,
            usage,
            prompt_logprobs: None,
            kv_transfer_params: None,
        }),
        Flavor::Completion => serde_json::to_vec(&CompletionResponse {
            id: &generation.id,
            object: "text_completion",
            created: generation.created,
            model: &generation.model,
            choices: generation
                .choice_list()
                .map(|(index, prompt, sample)| CompletionChoice {
                    index,
                    text: text_of(prompt, sample),
                    logprobs: None,
                    finish_reason,
                    stop_reason: None,
                    prompt_logprobs: None,
                })
                .collect(),
            service_tier: None,
            system_fingerprint: None,
            usage,
            kv_transfer_params: None,
        }),
    };
    body.map_err(|err| ApiError::Internal(format!("cannot encode the response: {err}")))
}
