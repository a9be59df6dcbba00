//! HTTP/1.1 on both sides of the gateway, without hyper on the request path:
//! [`server`] serves the clients, [`crate::proxy::h1`] talks to the engines. Both read message
//! bodies with the same [`Decoder`]: content-length, chunked and (responses only)
//! read-until-close framing, with frames that are slices of the read buffer (no copy).

pub mod fields;
pub mod server;

pub use fields::{Fields, HeaderLookup};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, InvalidHeaderName};

/// Longest chunk-size or trailer line accepted.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// A message body that breaks its framing.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("chunk-size or trailer line too long")]
    LineTooLong,
}

/// Where a body's decoding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the peer closes (responses only).
    UntilClose,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: its bytes still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (trailers are dropped).
    Trailers,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    End,
    /// More bytes are needed.
    More,
}

impl Decoder {
    /// A body of `length` bytes.
    pub fn length(length: u64) -> Self {
        if length == 0 {
            Decoder::Done
        } else {
            Decoder::Length(length)
        }
    }

    pub fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size)
    }

    /// Decode what `buffer` holds: a data frame (taken from the buffer without a copy), the
    /// end of the body, or the need for more bytes.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(remaining) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let (data, left) = take_up_to(buffer, remaining);
                    *self = Decoder::length(left);
                    return Ok(Decoded::Data(data));
                }
                Decoder::UntilClose => {
                    if buffer.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buffer.split().freeze()));
                }
                Decoder::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buffer)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&line)?;
                    *self = Decoder::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoder::Chunked(Chunk::Data(remaining)) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let (data, left) = take_up_to(buffer, remaining);
                    *self = Decoder::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Decoded::Data(data));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buffer.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buffer[..2] != b"\r\n" {
                        return Err(FramingError::ChunkEnd);
                    }
                    buffer.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    let Some(line) = take_line(buffer)? else {
                        return Ok(Decoded::More);
                    };
                    if line.is_empty() {
                        *self = Decoder::Done;
                    }
                }
            }
        }
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(remaining) => Some(*remaining),
            Decoder::Done => Some(0),
            _ => None,
        }
    }
}

/// The buffered bytes, at most `remaining` of them (a frame, no copy), and how many are still
/// to come after them.
fn take_up_to(buffer: &mut BytesMut, remaining: u64) -> (Bytes, u64) {
    let take =
        usize::try_from(remaining).map_or(buffer.len(), |remaining| remaining.min(buffer.len()));
    (buffer.split_to(take).freeze(), remaining - take as u64)
}

/// One CRLF-terminated line (without the CRLF), if the buffer holds all of it.
fn take_line(buffer: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
    match memchr::memchr(b'\n', buffer) {
        Some(end) => {
            let mut line = buffer.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buffer.len() > MAX_LINE_BYTES => Err(FramingError::LineTooLong),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`1a;extension=x`).
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.split(|&byte| byte == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits)
        .map(str::trim)
        .ok()
        .filter(|digits| !digits.is_empty() && digits.len() <= 15);
    digits
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .ok_or(FramingError::ChunkSize)
}

/// A parsed header name. The names nearly every request and response has, written in
/// lowercase (as most clients and engines write them), are constants: `HeaderName::from_bytes`
/// lowercases each name into a buffer, searches the table of standard names, and allocates a
/// copy of any other name (`x-request-id`). Everything else goes to it.
pub fn header_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    use http::header;
    let known = match name {
        b"host" => header::HOST,
        b"date" => header::DATE,
        b"accept" => header::ACCEPT,
        b"server" => header::SERVER,
        b"expect" => header::EXPECT,
        b"user-agent" => header::USER_AGENT,
        b"connection" => header::CONNECTION,
        b"content-type" => header::CONTENT_TYPE,
        b"x-request-id" => crate::proxy::REQUEST_ID_HEADER,
        b"authorization" => header::AUTHORIZATION,
        b"content-length" => header::CONTENT_LENGTH,
        b"accept-encoding" => header::ACCEPT_ENCODING,
        b"transfer-encoding" => header::TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(name),
    };
    Ok(known)
}

/// Offsets of a header's name and value in the parsed buffer: (name start, name end, value
/// start, value end).
pub type Span = (usize, usize, usize, usize);

/// Where each header parsed by httparse lies in the buffer that starts at `base`, so the head
/// can then become shared `Bytes` that [`Fields`] point into (no copy).
pub fn header_spans(headers: &[httparse::Header<'_>], base: usize) -> Vec<Span> {
    headers
        .iter()
        .map(|header| {
            let name = header.name.as_ptr() as usize - base;
            let value = header.value.as_ptr() as usize - base;
            (
                name,
                name + header.name.len(),
                value,
                value + header.value.len(),
            )
        })
        .collect()
}

/// The one value of the `content-length` headers: repeated headers (or a comma-separated
/// list) must agree, and each must be a plain decimal number.
pub fn content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in values {
        length = add_content_length(length, value)?;
    }
    Ok(length)
}

/// [`content_length`] one header at a time, for parsers that meet the headers in a loop: the
/// length so far and the next `content-length` value.
pub fn add_content_length(
    mut length: Option<u64>,
    value: &[u8],
) -> Result<Option<u64>, &'static str> {
    for item in value.split(|&byte| byte == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err("content-length is not a number");
        }
        let parsed = item
            .iter()
            .fold(0_u64, |total, digit| total * 10 + u64::from(digit - b'0'));
        if length.is_some_and(|previous| previous != parsed) {
            return Err("conflicting content-length values");
        }
        length = Some(parsed);
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut decoder: Decoder, input: &[u8], piece: usize) -> (Vec<u8>, Decoder) {
        let mut buffer = BytesMut::new();
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            buffer.extend_from_slice(part);
            while let Decoded::Data(data) = decoder.decode(&mut buffer).unwrap() {
                out.extend_from_slice(&data);
            }
        }
        (out, decoder)
    }

    #[test]
    fn length_and_chunked_bodies_decode_in_any_pieces() {
        let chunked = b"5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\ntrailer: t\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (out, decoder) = decode_all(Decoder::chunked(), chunked, piece);
            assert_eq!(out, b"hello world", "pieces of {piece}");
            assert_eq!(decoder, Decoder::Done);
            let (out, decoder) = decode_all(Decoder::length(5), b"hello", piece);
            assert_eq!(out, b"hello");
            assert_eq!(decoder, Decoder::Done);
        }
        // The bytes after a body stay in the buffer (the next pipelined message).
        let mut buffer = BytesMut::from(&b"abcNEXT"[..]);
        let mut decoder = Decoder::length(3);
        assert_eq!(
            decoder.decode(&mut buffer).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(decoder.decode(&mut buffer).unwrap(), Decoded::End);
        assert_eq!(&buffer[..], b"NEXT");
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for input in [&b"zz\r\n"[..], b"2\r\nabXY", &[b'1'; 5000]] {
            let mut buffer = BytesMut::from(input);
            let mut decoder = Decoder::chunked();
            let result = loop {
                match decoder.decode(&mut buffer) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(result.is_err(), "{input:?}");
        }
    }

    #[test]
    fn header_names_are_the_same_with_or_without_the_fast_path() {
        for name in [
            "host",
            "Host",
            "content-length",
            "Content-Length",
            "x-request-id",
            "X-Request-Id",
            "transfer-encoding",
            "x-custom",
            "accept-encoding",
            "authorization",
        ] {
            assert_eq!(
                header_name(name.as_bytes()).unwrap(),
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "{name}"
            );
        }
        for bad in [&b""[..], b"bad name", b"caf\xc3\xa9", b"a:b"] {
            assert!(header_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"FF;name=value").unwrap(), 255);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"-1").is_err());
        assert!(chunk_size(b"1234567890abcdef0").is_err());
    }

    #[test]
    fn content_lengths() {
        let values = |list: &[&'static str]| -> Vec<&'static [u8]> {
            list.iter().map(|value| value.as_bytes()).collect()
        };
        assert_eq!(content_length(values(&[]).into_iter()), Ok(None));
        assert_eq!(content_length(values(&["42"]).into_iter()), Ok(Some(42)));
        assert_eq!(
            content_length(values(&["7", "7, 7"]).into_iter()),
            Ok(Some(7))
        );
        for bad in [
            &["+1"][..],
            &["1 2"],
            &["-1"],
            &["0x10"],
            &[""],
            &["1", "2"],
            &["99999999999999999999"],
        ] {
            assert!(content_length(values(bad).into_iter()).is_err(), "{bad:?}");
        }
    }
}
