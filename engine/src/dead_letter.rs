//! Dead letters: input records a source could not decode, with where they came from, so
//! nothing is lost silently and the job goes on.
//!
//! A source hands its rejected records to the runtime ([`crate::Source::take_dead_letters`]),
//! which sends them down the source's dead-letter output (the port `<source>.dead_letters`,
//! [`crate::Stream::dead_letters`]) like any record: between the same checkpoint barriers as
//! the events around them, so a dead letter read before a barrier is in that checkpoint and
//! one read after it is not. A job writes them with an ordinary sink; the one that keeps
//! them exactly once in one file is `weir_connectors::AppendFileSink`.
//!
//! Each dead letter serializes as one JSON object:
//! `{"source":PATH,"line":N,"error":MSG,"raw":LINE}`. `raw` is the record as read, without
//! its line break. A record whose bytes are not UTF-8 has `"raw_base64"` instead (standard
//! base64 with padding, RFC 4648), so the exact bytes can be recovered: no replacement
//! characters, nothing guessed.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One rejected input record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it came from (a path or URI).
    pub source: String,
    /// Its line number (1-based).
    pub line: u64,
    /// Why it was rejected.
    pub error: String,
    /// The record as it was read: `raw` (text) or `raw_base64` (bytes not UTF-8).
    #[serde(flatten)]
    pub raw: Raw,
}

impl DeadLetter {
    /// The dead letter of `raw` (the record's bytes) from `source` at `line`.
    pub fn new(source: String, line: u64, error: String, raw: &[u8]) -> Self {
        DeadLetter {
            source,
            line,
            error,
            raw: Raw::of(raw),
        }
    }
}

/// The bytes of a rejected record, as its dead letter keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Raw {
    /// UTF-8 text as it was read: `"raw": "..."`.
    #[serde(rename = "raw")]
    Text(String),
    /// Bytes that are not UTF-8, in standard base64 with padding: `"raw_base64": "..."`.
    #[serde(rename = "raw_base64")]
    Base64(String),
}

impl Raw {
    /// Text if `bytes` are UTF-8, else their base64.
    pub fn of(bytes: &[u8]) -> Raw {
        match std::str::from_utf8(bytes) {
            Ok(text) => Raw::Text(text.to_string()),
            Err(_) => Raw::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The start of a longer record, and how many of its bytes it keeps: as [`Raw::of`],
    /// but text whose last character was cut in half by the limit stays text, without that
    /// partial character.
    pub fn of_start(bytes: &[u8]) -> (Raw, usize) {
        let kept = match std::str::from_utf8(bytes) {
            // `error_len` is `None` only when the input ends inside a character.
            Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
            _ => bytes,
        };
        (Raw::of(kept), kept.len())
    }

    /// The bytes the record had (kept ones of an over-long line).
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self {
            Raw::Text(text) => Ok(text.as_bytes().to_vec()),
            Raw::Base64(encoded) => base64::engine::general_purpose::STANDARD.decode(encoded),
        }
    }

    /// The text, if the record was UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Raw::Text(text) => Some(text),
            Raw::Base64(_) => None,
        }
    }
}

impl From<&str> for Raw {
    fn from(text: &str) -> Raw {
        Raw::Text(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(letter: &DeadLetter) -> String {
        serde_json::to_string(letter).unwrap_or_default()
    }

    #[test]
    fn text_stays_raw_and_other_bytes_are_base64_that_decodes_back() {
        let text = DeadLetter::new("f".into(), 3, "bad".into(), b"not json");
        assert_eq!(
            json(&text),
            r#"{"source":"f","line":3,"error":"bad","raw":"not json"}"#
        );
        let bytes: &[u8] = b"caf\xe9 \xff\x00";
        let binary = DeadLetter::new("f".into(), 4, "not UTF-8".into(), bytes);
        let line = json(&binary);
        assert!(line.contains(r#""raw_base64":""#), "{line}");
        assert!(!line.contains(r#""raw":"#), "{line}");
        let back: Result<DeadLetter, _> = serde_json::from_str(&line);
        assert_eq!(back.as_ref().ok(), Some(&binary));
        assert_eq!(binary.raw.bytes().ok().as_deref(), Some(bytes));
        let back: Result<DeadLetter, _> = serde_json::from_str(&json(&text));
        assert_eq!(back.ok(), Some(text));
    }

    #[test]
    fn the_start_of_a_long_line_cut_inside_a_character_stays_text() {
        let euro = "\u{20ac}".as_bytes();
        let mut cut = b"ab".to_vec();
        cut.extend_from_slice(&euro[..2]);
        assert_eq!(Raw::of_start(&cut), (Raw::Text("ab".into()), 2));
        assert!(matches!(Raw::of(&cut), Raw::Base64(_)));
        let mut bad = b"a\xffb".to_vec();
        bad.extend_from_slice(&euro[..2]);
        let (raw, kept) = Raw::of_start(&bad);
        assert_eq!(kept, bad.len());
        assert_eq!(raw.bytes().ok(), Some(bad));
    }
}
