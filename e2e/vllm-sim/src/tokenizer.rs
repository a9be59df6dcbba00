//! Token approximation, chat template and deterministic output text.
//!
//! There is no vocabulary: a token is a run of [`BYTES_PER_TOKEN`] bytes of the
//! UTF-8 text (the last one may be shorter), the usual "about four characters a
//! token" rule for English with BPE tokenizers. Its id is those bytes read as a
//! little-endian integer, so equal text gives equal ids and two prompts sharing
//! a byte prefix share a token prefix, which is all the prefix cache needs.
//! Counting is O(1) and tokenizing one pass with no allocation beyond the ids.
//!
//! Output text is one word per token from a fixed word list, chosen by a hash
//! of the prompt, the choice index and the position: the same request always
//! gets the same answer, and different prompts get different answers.

use std::hash::{Hash, Hasher};

use crate::protocol::{ChatMessage, MessageContent};

/// Approximate UTF-8 bytes per token.
pub const BYTES_PER_TOKEN: usize = 4;

/// Number of tokens [`tokenize`] would return for `text`.
pub fn count_tokens(text: &str) -> usize {
    text.len().div_ceil(BYTES_PER_TOKEN)
}

/// Token ids of `text` (see the module docs).
pub fn tokenize(text: &str) -> Vec<u32> {
    text.as_bytes()
        .chunks(BYTES_PER_TOKEN)
        .map(|chunk| {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            u32::from_le_bytes(word)
        })
        .collect()
}

/// Renders chat messages with a ChatML-style template (Qwen's default), ending
/// with the assistant generation prompt. Text parts of multi-part content are
/// joined; other parts (images, audio) count as a short placeholder. Tool
/// definitions, when present, are rendered into a system block as real chat
/// templates do, so they cost prompt tokens.
pub fn render_chat(messages: &[ChatMessage], tools: Option<&serde_json::Value>) -> String {
    let mut prompt = String::with_capacity(64 + messages.len() * 64);
    if let Some(tools) = tools {
        prompt.push_str("<|im_start|>system\n# Tools\n");
        prompt.push_str(&tools.to_string());
        prompt.push_str("<|im_end|>\n");
    }
    for message in messages {
        prompt.push_str("<|im_start|>");
        prompt.push_str(&message.role);
        prompt.push('\n');
        match &message.content {
            Some(MessageContent::Text(text)) => prompt.push_str(text),
            Some(MessageContent::Parts(parts)) => {
                for part in parts {
                    match part.text.as_deref() {
                        Some(text) => prompt.push_str(text),
                        None => {
                            prompt.push('<');
                            prompt.push_str(&part.part_type);
                            prompt.push('>');
                        }
                    }
                }
            }
            None => {}
        }
        if let Some(tool_calls) = &message.tool_calls {
            prompt.push_str(&tool_calls.to_string());
        }
        prompt.push_str("<|im_end|>\n");
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt
}

/// Hash of token ids, the seed of the generated text.
pub fn prompt_seed(tokens: &[u32]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    tokens.hash(&mut hasher);
    hasher.finish()
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "is",
    "a",
    "simulated",
    "answer",
    "to",
    "your",
    "prompt",
    "and",
    "it",
    "has",
    "no",
    "meaning",
    "but",
    "stays",
    "stable",
    "across",
    "runs",
    "so",
    "tests",
    "can",
    "compare",
    "text",
    "cluster",
    "gateway",
    "token",
    "cache",
    "prefix",
    "queue",
    "stream",
    "latency",
    "kubernetes",
    "operator",
    "vector",
    "request",
    "server",
    "block",
    "batch",
    "engine",
    "reply",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "of",
    "in",
    "on",
    "for",
    "with",
    "from",
    "by",
    "as",
    "at",
    "we",
    "you",
    "they",
    "this",
    "that",
    "then",
    "now",
];

/// Text of output token `position` of choice `choice` for a prompt with `seed`:
/// a word, preceded by a space except at position 0.
pub fn output_token(seed: u64, choice: u32, position: u64) -> &'static str {
    // SplitMix64 finaliser: cheap and well mixed.
    let mut x = seed ^ (u64::from(choice) << 48) ^ position.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let word = WORDS[(x % WORDS.len() as u64) as usize];
    if position == 0 {
        word
    } else {
        SPACED[(x % WORDS.len() as u64) as usize]
    }
}

/// [`WORDS`] with a leading space, so output tokens need no allocation.
static SPACED: [&str; 64] = [
    " the",
    " model",
    " is",
    " a",
    " simulated",
    " answer",
    " to",
    " your",
    " prompt",
    " and",
    " it",
    " has",
    " no",
    " meaning",
    " but",
    " stays",
    " stable",
    " across",
    " runs",
    " so",
    " tests",
    " can",
    " compare",
    " text",
    " cluster",
    " gateway",
    " token",
    " cache",
    " prefix",
    " queue",
    " stream",
    " latency",
    " kubernetes",
    " operator",
    " vector",
    " request",
    " server",
    " block",
    " batch",
    " engine",
    " reply",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " lazy",
    " dog",
    " of",
    " in",
    " on",
    " for",
    " with",
    " from",
    " by",
    " as",
    " at",
    " we",
    " you",
    " they",
    " this",
    " that",
    " then",
    " now",
];

/// Full output text of one choice: `tokens` words.
pub fn output_text(seed: u64, choice: u32, tokens: u64) -> String {
    let mut text = String::with_capacity(tokens as usize * 7);
    for position in 0..tokens {
        text.push_str(output_token(seed, choice, position));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_tables_agree() {
        assert_eq!(WORDS.len(), SPACED.len());
        for (word, spaced) in WORDS.iter().zip(SPACED.iter()) {
            assert_eq!(format!(" {word}"), *spaced);
        }
    }

    #[test]
    fn four_bytes_per_token() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
        assert_eq!(tokenize("abcde").len(), 2);
        assert_eq!(tokenize("abcdefgh")[..1], tokenize("abcdXYZ")[..1]);
    }

    #[test]
    fn output_is_deterministic_and_prompt_dependent() {
        let a = output_text(1, 0, 12);
        assert_eq!(a, output_text(1, 0, 12));
        assert_ne!(a, output_text(2, 0, 12));
        assert_ne!(a, output_text(1, 1, 12));
        assert!(!a.starts_with(' '));
        assert_eq!(a.split(' ').count(), 12);
    }

    #[test]
    fn chat_template_shape() {
        let messages: Vec<ChatMessage> = serde_json::from_str(
            r#"[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"x"}}]}]"#,
        )
        .unwrap();
        let rendered = render_chat(&messages, None);
        assert_eq!(
            rendered,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<image_url><|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
