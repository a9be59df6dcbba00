//! The cacheable prefix of a prompt, as a chain of block hashes, for
//! [`crate::policy::PrefixCache`]. Parsed only for models routed with that strategy.
//!
//! - Chat: every message but the last (the system prompt and the conversation so far: what
//!   the engine has cached from earlier turns), each as role and content text.
//! - Completions: the prompt.
//!
//! The text is cut into blocks of [`BLOCK_BYTES`] (about 64 tokens), full blocks only, like the
//! engine's KV blocks; block `i`'s hash covers blocks `0..=i` (a chain), seeded by the model id
//! (an adapter's cache is not its base model's). Two prompts share the first `n` hashes exactly
//! when they share the first `n` blocks of text.

use std::hash::Hasher;

use serde::Deserialize;
use serde_json::Value;

/// Bytes per block: about 64 tokens of English text.
pub const BLOCK_BYTES: usize = 256;
/// Blocks hashed at most (128 KiB of prompt); a longer prefix is routed on its beginning.
pub const MAX_BLOCKS: usize = 512;

#[derive(Deserialize)]
struct Fields {
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    prompt: Option<Value>,
}

/// Chain hashes of the full blocks of `bytes`, fed in pieces.
struct Blocks {
    hashes: Vec<u64>,
    buffer: Vec<u8>,
    previous: u64,
}

impl Blocks {
    fn new(seed: &str) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(seed.as_bytes());
        Self {
            hashes: Vec::new(),
            buffer: Vec::with_capacity(BLOCK_BYTES),
            previous: hasher.finish(),
        }
    }

    fn full(&self) -> bool {
        self.hashes.len() >= MAX_BLOCKS
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.full() {
            let take = (BLOCK_BYTES - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() == BLOCK_BYTES {
                let mut hasher = std::hash::DefaultHasher::new();
                hasher.write_u64(self.previous);
                hasher.write(&self.buffer);
                self.previous = hasher.finish();
                self.hashes.push(self.previous);
                self.buffer.clear();
            }
        }
    }
}

fn feed_content(blocks: &mut Blocks, content: &Value) {
    match content {
        Value::String(text) => blocks.feed(text.as_bytes()),
        Value::Array(parts) => {
            for part in parts {
                match part.get("text").and_then(Value::as_str) {
                    Some(text) => blocks.feed(text.as_bytes()),
                    // Images and other parts: their JSON, so equal parts hash equal.
                    None => blocks.feed(part.to_string().as_bytes()),
                }
            }
        }
        Value::Null => {}
        other => blocks.feed(other.to_string().as_bytes()),
    }
}

/// The block hashes of the request's cacheable prefix; empty when it has none (a first message
/// alone, a prompt shorter than a block, a body of another shape).
pub fn prefix_blocks(body: &[u8], seed: &str) -> Vec<u64> {
    let Ok(fields) = serde_json::from_slice::<Fields>(body) else {
        return Vec::new();
    };
    let mut blocks = Blocks::new(seed);
    if let Some(messages) = &fields.messages {
        let earlier = messages.len().saturating_sub(1);
        for message in &messages[..earlier] {
            if blocks.full() {
                break;
            }
            let role = message.get("role").and_then(Value::as_str).unwrap_or("");
            blocks.feed(role.as_bytes());
            blocks.feed(b"\n");
            if let Some(content) = message.get("content") {
                feed_content(&mut blocks, content);
            }
            blocks.feed(b"\x00");
        }
    } else if let Some(prompt) = &fields.prompt {
        match prompt {
            Value::String(text) => blocks.feed(text.as_bytes()),
            Value::Array(items) => match items.first() {
                Some(Value::String(text)) => blocks.feed(text.as_bytes()),
                // Token ids: a list of numbers, or a list of such lists.
                Some(Value::Number(_)) => feed_tokens(&mut blocks, items),
                Some(Value::Array(tokens)) => feed_tokens(&mut blocks, tokens),
                _ => {}
            },
            _ => {}
        }
    }
    blocks.hashes
}

fn feed_tokens(blocks: &mut Blocks, tokens: &[Value]) {
    for token in tokens {
        if blocks.full() {
            break;
        }
        let id = token.as_u64().unwrap_or(u64::MAX) as u32;
        blocks.feed(&id.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(system: &str, turns: &[&str]) -> Vec<u8> {
        let mut messages = vec![json!({"role": "system", "content": system})];
        for (index, turn) in turns.iter().enumerate() {
            let role = if index % 2 == 0 { "user" } else { "assistant" };
            messages.push(json!({"role": role, "content": turn}));
        }
        serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap()
    }

    #[test]
    fn shared_system_prompt_shares_blocks() {
        let system = "You are a careful assistant. ".repeat(40); // 1160 bytes: 4 blocks
        let a = prefix_blocks(&chat(&system, &["question one"]), "m");
        let b = prefix_blocks(&chat(&system, &["a different question"]), "m");
        assert_eq!(a.len(), 4);
        assert_eq!(a, b, "the last message is not part of the prefix");
        // The conversation so far extends the chain.
        let long_answer = "word ".repeat(200);
        let c = prefix_blocks(&chat(&system, &["question one", &long_answer, "next"]), "m");
        assert!(c.len() > a.len());
        assert_eq!(c[..3], a[..3]);
        // Another system prompt shares nothing; another seed (adapter) neither.
        let other = prefix_blocks(&chat(&"Be terse. ".repeat(120), &["q"]), "m");
        assert_ne!(other[0], a[0]);
        assert_ne!(prefix_blocks(&chat(&system, &["q"]), "adapter")[0], a[0]);
    }

    #[test]
    fn blocks_are_a_chain_not_a_bag() {
        let one = "a".repeat(BLOCK_BYTES) + &"b".repeat(BLOCK_BYTES);
        let two = "b".repeat(BLOCK_BYTES) + &"b".repeat(BLOCK_BYTES);
        let body = |text: &str| serde_json::to_vec(&json!({"model": "m", "prompt": text})).unwrap();
        let (x, y) = (
            prefix_blocks(&body(&one), "m"),
            prefix_blocks(&body(&two), "m"),
        );
        assert_eq!((x.len(), y.len()), (2, 2));
        assert_ne!(x[1], y[1], "same second block after a different first one");
    }

    #[test]
    fn no_useful_prefix() {
        assert!(prefix_blocks(&chat(&"x".repeat(5000), &[]), "m").is_empty());
        assert!(prefix_blocks(&chat("short", &["q"]), "m").is_empty());
        assert!(prefix_blocks(b"not json", "m").is_empty());
        assert!(prefix_blocks(br#"{"model":"m","input":"embed me"}"#, "m").is_empty());
    }

    #[test]
    fn prompts_of_every_shape() {
        let text = "z".repeat(BLOCK_BYTES * 3);
        let string = serde_json::to_vec(&json!({"prompt": text})).unwrap();
        let list = serde_json::to_vec(&json!({"prompt": [text]})).unwrap();
        assert_eq!(prefix_blocks(&string, "m").len(), 3);
        assert_eq!(prefix_blocks(&string, "m"), prefix_blocks(&list, "m"));
        let tokens: Vec<u32> = (0..200).collect();
        let ids = serde_json::to_vec(&json!({"prompt": tokens})).unwrap();
        assert_eq!(prefix_blocks(&ids, "m").len(), 3);
        let huge =
            serde_json::to_vec(&json!({"prompt": "q".repeat(BLOCK_BYTES * (MAX_BLOCKS + 10))}))
                .unwrap();
        assert_eq!(prefix_blocks(&huge, "m").len(), MAX_BLOCKS);
    }
}
