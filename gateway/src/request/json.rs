//! The fast path of [`super::model_of`]: one validating pass over the body that finds the
//! top-level `"model"` string without building anything.
//!
//! It answers only when the answer is certain: the body is valid JSON (RFC 8259: grammar,
//! escapes, no raw control characters in strings, UTF-8), a top-level object with exactly one
//! `"model"` member whose value is a string without escapes, nested at most [`MAX_DEPTH`]
//! deep. For everything else (invalid bodies, escapes in the model or in a top-level key,
//! deep nesting) it answers `None` and serde_json decides, with its own error messages. So
//! the scan only has to be right when it accepts; the tests check it against serde_json.

/// Deeper bodies go to serde_json (whose limit is 128).
const MAX_DEPTH: usize = 100;

/// The model of a body the scan is certain about.
pub fn top_level_model(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let mut scan = Scan {
        bytes: body,
        position: 0,
    };
    scan.skip_whitespace();
    scan.expect(b'{')?;
    let mut model = None;
    scan.skip_whitespace();
    if scan.peek() == Some(b'}') {
        scan.position += 1;
    } else {
        loop {
            scan.skip_whitespace();
            scan.expect(b'"')?;
            let (start, end, escaped) = scan.string()?;
            if escaped {
                // An escaped key could spell `model`.
                return None;
            }
            scan.skip_whitespace();
            scan.expect(b':')?;
            scan.skip_whitespace();
            if &body[start..end] == b"model" {
                if model.is_some() || scan.peek() != Some(b'"') {
                    return None;
                }
                scan.position += 1;
                let (start, end, escaped) = scan.string()?;
                if escaped {
                    return None;
                }
                model = Some(&text[start..end]);
            } else {
                scan.value(1)?;
            }
            scan.skip_whitespace();
            match scan.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
    }
    scan.skip_whitespace();
    if scan.position != body.len() {
        return None;
    }
    model
}

/// Where the first quote, backslash or raw control character of `text` is: memchr finds
/// the quote or backslash, and the part skipped is checked for control characters with a
/// minimum (a loop that vectorizes, unlike a search that stops early). (Checking the first
/// bytes of short strings one by one first measured neutral, 30 of ~25k instructions per
/// request, and a byte-by-byte table lookup slower.)
fn special_in(text: &[u8]) -> Option<usize> {
    let found = memchr::memchr2(b'"', b'\\', text)?;
    let skipped = &text[..found];
    if skipped.iter().fold(u8::MAX, |low, &byte| low.min(byte)) < 0x20 {
        return skipped.iter().position(|&byte| byte < 0x20);
    }
    Some(found)
}

struct Scan<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.position += 1;
        }
    }

    /// A value nested `depth` deep (the top-level object's members are at 1).
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.position += 1;
                self.string().map(|_| ())
            }
            b'{' => {
                self.position += 1;
                self.object(depth + 1)
            }
            b'[' => {
                self.position += 1;
                self.array(depth + 1)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Some(());
        }
        loop {
            self.skip_whitespace();
            self.expect(b'"')?;
            self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            self.value(depth)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.position += 1;
            return Some(());
        }
        loop {
            self.skip_whitespace();
            self.value(depth)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The rest of a string whose opening quote was read: its content's span and whether
    /// it has escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.position;
        let mut escaped = false;
        loop {
            let special = self.position + special_in(&self.bytes[self.position..])?;
            self.position = special + 1;
            match self.bytes[special] {
                b'"' => return Some((start, special, escaped)),
                b'\\' => escaped = true,
                // A raw control character.
                _ => return None,
            }
            match self.next()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    let hex = self.bytes.get(self.position..self.position + 4)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    let code = hex.iter().fold(0_u32, |code, &digit| {
                        code * 16 + char::from(digit).to_digit(16).unwrap_or(0)
                    });
                    if (0xD800..=0xDFFF).contains(&code) {
                        // Surrogates (pairs or not) are left to serde_json.
                        return None;
                    }
                    self.position += 4;
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.position + word.len();
        (self.bytes.get(self.position..end)? == word).then(|| self.position = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.position += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.position += 1;
            self.first_digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.position += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.position += 1;
            }
            self.first_digit()?;
            self.digits();
        }
        Some(())
    }

    fn first_digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            self.position += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json (the slow path of `model_of`) makes of a body.
    fn serde_model(body: &[u8]) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Fields {
            model: Option<String>,
        }
        serde_json::from_slice::<Fields>(body).ok()?.model
    }

    /// The scan may decline anything, but what it accepts serde_json must accept the same.
    fn check(body: &[u8]) -> Option<String> {
        let scanned = top_level_model(body).map(str::to_string);
        if let Some(model) = &scanned {
            assert_eq!(
                serde_model(body).as_ref(),
                Some(model),
                "accepted what serde_json reads otherwise: {:?}",
                String::from_utf8_lossy(body)
            );
        }
        scanned
    }

    #[test]
    fn special_in_agrees_with_a_byte_by_byte_search() {
        let naive = |text: &[u8]| {
            text.iter()
                .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
        };
        // A text with no quote or backslash is an unterminated string: `None`, or the
        // position of a control character, are both a refusal.
        let agrees = |text: &[u8]| {
            let found = special_in(text);
            if text.iter().any(|&byte| byte == b'"' || byte == b'\\') {
                found == naive(text)
            } else {
                found.is_none_or(|at| text[at] < 0x20)
            }
        };
        for length in 0..48 {
            let plain = vec![b'a'; length];
            assert_eq!(special_in(&plain), None, "{length}");
            assert!(agrees(&plain));
            for at in 0..length {
                for special in [b'"', b'\\', b'\n', 0x00, 0x1f] {
                    let mut text = plain.clone();
                    text[at] = special;
                    // A second special byte later must not be the one found.
                    if at + 3 < length {
                        text[at + 3] = b'"';
                    }
                    assert!(agrees(&text), "{length} {at} {special}");
                }
            }
        }
    }

    #[test]
    fn usual_requests_take_the_fast_path() {
        let bodies: [&[u8]; 6] = [
            br#"{"model":"m","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":16}"#,
            br#" { "messages" : [ ] , "model" : "Qwen/Qwen2.5-7B-Instruct" , "stream" : true } "#,
            br#"{"model":"m","temperature":0.7,"top_p":1e-3,"n":-2,"seed":0,"logit_bias":{"50256":-100},"stop":null,"x":[true,false,1.5E+3]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \"quoted\" \\ \/ \n\t \u4e2d"}]}"#,
            "{\"model\":\"m\",\"prompt\":\"héllo — 中文 😀\"}".as_bytes(),
            br#"{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}}]}"#,
        ];
        for body in bodies {
            let model = check(body);
            assert!(model.is_some(), "{:?}", String::from_utf8_lossy(body));
        }
        assert_eq!(
            check(bodies[1]).as_deref(),
            Some("Qwen/Qwen2.5-7B-Instruct")
        );
    }

    #[test]
    fn anything_doubtful_goes_to_serde() {
        let declined: [&[u8]; 26] = [
            b"",
            b"{",
            b"[]",
            br#"["m"]"#,
            br#"{}"#,
            br#"{"model":null}"#,
            br#"{"model":42}"#,
            br#"{"model":"a\/b"}"#,
            br#"{"mod\u0065l":"m"}"#,
            br#"{"model":"m","model":"n"}"#,
            br#"{"model":"m"} x"#,
            br#"{"model":"m",}"#,
            br#"{"model":"m","a":01}"#,
            br#"{"model":"m","a":1.}"#,
            br#"{"model":"m","a":.5}"#,
            br#"{"model":"m","a":1e}"#,
            br#"{"model":"m","a":+1}"#,
            br#"{"model":"m","a":tru}"#,
            br#"{"model":"m","a":"\x"}"#,
            br#"{"model":"m","a":"\u12"}"#,
            br#"{"model":"m","a":"\ud83d\ude00"}"#,
            b"{\"model\":\"m\",\"a\":\"tab\there\"}",
            b"{\"model\":\"m\",\"a\":\"\xff\"}",
            br#"{"model":"m","a":[1,]}"#,
            br#"{"model":"m","a":{"b"}}"#,
            br#"{"model":"m" "a":1}"#,
        ];
        for body in declined {
            assert_eq!(check(body), None, "{:?}", String::from_utf8_lossy(body));
        }
        let deep = format!(
            r#"{{"model":"m","x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(check(deep.as_bytes()), None);
        let long = "x".repeat(100);
        let control = format!("{{\"model\":\"m\",\"a\":\"{long}\t{long}\"}}");
        assert_eq!(
            check(control.as_bytes()),
            None,
            "a tab far into a long string"
        );
        let unterminated = format!("{{\"model\":\"m\",\"a\":\"{long}");
        assert_eq!(check(unterminated.as_bytes()), None);
        let escapes = format!(r#"{{"a":"{long}\"{long}\\{long}\u00e9","model":"m"}}"#);
        assert_eq!(
            check(escapes.as_bytes()).as_deref(),
            Some("m"),
            "escapes in long strings"
        );
        let nested = format!(
            r#"{{"model":"m","x":{}1{}}}"#,
            "[".repeat(50),
            "]".repeat(50)
        );
        assert_eq!(check(nested.as_bytes()).as_deref(), Some("m"));
    }

    /// Random single-byte edits of valid bodies: whatever the scan still accepts, serde_json
    /// reads the same.
    #[test]
    fn mutated_bodies_never_fool_the_scan() {
        let seeds: [&[u8]; 3] = [
            br#"{"model":"m","messages":[{"role":"user","content":"a\"b\\c\u0041"}],"n":-1.5e+3,"s":true,"t":null}"#,
            br#"{"a":{"b":[1,2,{"c":"d"}]},"model":"x-y","e":[],"f":{}}"#,
            br#" {"model" : "m" , "z" : [ 0 , -0.0 , 1E9 ] } "#,
        ];
        let alphabet = b"{}[]\":,\\/ 0123456789-+.eEtruefalsn\x00\x1f\x7f\xc3\xa9\xff";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds {
            for _ in 0..20_000 {
                let mut body = seed.to_vec();
                for _ in 0..1 + random() % 3 {
                    let at = (random() % body.len() as u64) as usize;
                    let byte = alphabet[(random() % alphabet.len() as u64) as usize];
                    match random() % 3 {
                        0 => body[at] = byte,
                        1 => body.insert(at, byte),
                        _ => {
                            body.remove(at);
                        }
                    }
                    if body.is_empty() {
                        break;
                    }
                }
                check(&body);
            }
        }
    }
}
