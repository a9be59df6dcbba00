//! The header fields of a message (a client's request, an engine's response) as they
//! arrived: the bytes of its head and where each name and value lies in them, not a
//! [`HeaderMap`].
//!
//! A proxied request reads three or four of its headers and sends the rest on as they are.
//! Building a `HeaderMap` for that (a hashed table of two allocations, a name and a shared
//! value per field, and its teardown) was about 4k of the gateway's ~30k instructions per
//! request (callgrind, docs/benchmarks.md). Here a lookup is a scan of a few fields with a
//! case-insensitive comparison, and writing the fields upstream copies their bytes. Requests
//! that the router serves get a `HeaderMap` made from these fields ([`Fields::to_map`]).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};

use super::{header_name, Span};

/// A message's header fields, in the order received.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    /// The whole head the spans point into (shared, not copied).
    head: Bytes,
    /// Name and value offsets of each field still present.
    spans: Vec<Span>,
}

/// A field whose name or value a [`HeaderMap`] does not accept.
#[derive(Debug, thiserror::Error)]
#[error("invalid header field `{name}`")]
pub struct InvalidField {
    pub name: String,
}

impl Fields {
    /// The fields at `spans` of `head`: offsets that a parser (httparse, which validates
    /// names as tokens and values as visible text) found there.
    pub fn new(head: Bytes, spans: Vec<Span>) -> Self {
        Self { head, spans }
    }

    /// The fields of a `HeaderMap` (requests that did not come through the gateway's own
    /// server, and tests), written out as a head.
    pub fn from_map(headers: &HeaderMap) -> Self {
        let mut head = Vec::new();
        let mut spans = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name_start = head.len();
            head.extend_from_slice(name.as_str().as_bytes());
            let name_end = head.len();
            head.extend_from_slice(b": ");
            let value_start = head.len();
            head.extend_from_slice(value.as_bytes());
            spans.push((name_start, name_end, value_start, head.len()));
            head.extend_from_slice(b"\r\n");
        }
        Self::new(Bytes::from(head), spans)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every field as (name, value), names as received (any case).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let head = &self.head[..];
        self.spans
            .iter()
            .map(move |&(name_start, name_end, value_start, value_end)| {
                (&head[name_start..name_end], &head[value_start..value_end])
            })
    }

    /// The values of every field named `name` (compared without case).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(field, _)| is_named(field, name))
            .map(|(_, value)| value)
    }

    /// The value of the first field named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(field, _)| is_named(field, name))
            .map(|(_, value)| value)
    }

    /// Whether any field's comma-separated value lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .flat_map(|value| value.split(|&byte| byte == b','))
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Remove every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.retain(|field, _| !is_named(field, name));
    }

    /// Keep the fields for which `keep(name, value)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let head = &self.head[..];
        self.spans
            .retain(|&(name_start, name_end, value_start, value_end)| {
                keep(&head[name_start..name_end], &head[value_start..value_end])
            });
    }

    /// The fields as a `HeaderMap`, with values that share the head's bytes.
    pub fn to_map(&self) -> Result<HeaderMap, InvalidField> {
        let mut map = HeaderMap::with_capacity(self.len());
        let invalid = |name: &[u8]| InvalidField {
            name: String::from_utf8_lossy(name).into_owned(),
        };
        for &(name_start, name_end, value_start, value_end) in &self.spans {
            let raw = &self.head[name_start..name_end];
            let name = header_name(raw).map_err(|_| invalid(raw))?;
            let value = HeaderValue::from_maybe_shared(self.head.slice(value_start..value_end))
                .map_err(|_| invalid(raw))?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// Whether a field name as received is `name` (lowercase).
pub fn is_named(field: &[u8], name: &str) -> bool {
    field.len() == name.len() && field.eq_ignore_ascii_case(name.as_bytes())
}

/// Header lookup by lowercase name, for code that serves both proxied requests ([`Fields`])
/// and routed ones (`HeaderMap`).
pub trait HeaderLookup {
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl HeaderLookup for Fields {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name)
    }
}

impl HeaderLookup for HeaderMap {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of a head as the server parses it.
    fn parsed(head: &'static [u8]) -> Fields {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        let status = request.parse(head).expect("a valid head");
        assert!(status.is_complete());
        let spans = super::super::header_spans(request.headers, head.as_ptr() as usize);
        Fields::new(Bytes::from_static(head), spans)
    }

    const HEAD: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Request-Id: abc\r\nconnection: keep-alive, Upgrade\r\nx-a: 1\r\nX-A: 2\r\n\r\n";

    #[test]
    fn lookups_ignore_the_case_of_names_and_keep_the_order() {
        let fields = parsed(HEAD);
        assert_eq!(fields.len(), 6);
        assert_eq!(fields.get("x-request-id"), Some(&b"abc"[..]));
        assert_eq!(fields.get("content-type"), Some(&b"application/json"[..]));
        assert_eq!(fields.get("x-missing"), None);
        assert_eq!(fields.get_all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert!(fields.has_token("connection", "upgrade"));
        assert!(!fields.has_token("connection", "close"));
        let names: Vec<&[u8]> = fields.iter().map(|(name, _)| name).collect();
        assert_eq!(names[0], b"Host");
        assert_eq!(names[5], b"X-A");
    }

    #[test]
    fn removal() {
        let mut fields = parsed(HEAD);
        fields.remove("x-a");
        fields.remove("HOST");
        assert_eq!(fields.len(), 3);
        assert!(fields.get("x-a").is_none());
        assert!(fields.get("host").is_none());
        fields.retain(|name, _| !is_named(name, "x-request-id"));
        assert!(fields.get("x-request-id").is_none());
        assert_eq!(fields.len(), 2);
        assert_eq!(fields.get("content-type"), Some(&b"application/json"[..]));
    }

    #[test]
    fn converts_to_and_from_a_header_map() {
        let fields = parsed(HEAD);
        let map = fields.to_map().expect("valid fields");
        assert_eq!(map.len(), 6);
        assert_eq!(map["x-request-id"], "abc");
        assert_eq!(map.get_all("x-a").iter().count(), 2);
        let back = Fields::from_map(&map);
        assert_eq!(back.len(), 6);
        assert_eq!(back.header("content-type"), Some(&b"application/json"[..]));
        assert_eq!(map.header("host"), Some(&b"gw"[..]));
    }

    #[test]
    fn a_field_a_header_map_refuses_is_an_error() {
        let head = Bytes::from_static(b"bad name: v\r\n");
        let fields = Fields::new(head, vec![(0, 8, 10, 11)]);
        let error = fields
            .to_map()
            .expect_err("a space is not a token character");
        assert_eq!(error.name, "bad name");
    }
}
