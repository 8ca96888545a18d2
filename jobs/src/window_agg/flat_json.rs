//! The JSON-lines fast path of the `window-agg` job: flat objects decoded without serde.
//!
//! Two tiers, both returning `None` for anything they do not decide (the caller then takes
//! serde's path, which decides and words every error):
//! - [`decode_flat_json`] reads one flat object whose values are integers or strings
//!   without escapes, field by field, finding each field's name among the configured ones;
//! - [`LineShape`] is the layout of the last line that tier read: the bytes between its
//!   values (braces, names, colons, commas, spaces) and what each value is. Writers print
//!   every line of a stream the same way, so the next line is first matched against that
//!   layout: its text between values is compared as bytes and only the values are parsed.
//!
//! Invariant: wherever a tier returns an event, it is the event serde would return (tested
//! against serde, and the shape against the field-by-field reader, on the same lines).

use weir_engine::bytes::{same_bytes, short_words, word_at};
use weir_engine::intern::Interner;

use super::Event;

/// What a value of a line is, in a [`LineShape`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Time,
    Key,
    Value,
    /// A field the job does not read.
    Skipped,
}

/// A piece of [`LineShape::text`], with its words ([`short_words`]) if it has at most 16
/// bytes, as most have: a line's piece is then compared in two loads, not byte by byte.
#[derive(Debug, Clone, Copy, Default)]
struct Piece {
    start: usize,
    end: usize,
    words: (u64, u64),
}

impl Piece {
    fn of(text: &[u8], start: usize) -> Piece {
        let end = text.len();
        let words = match end - start {
            ..=16 => short_words(&text[start..]),
            _ => (0, 0),
        };
        Piece { start, end, words }
    }
}

/// One value of a [`LineShape`]: the text before it, where it goes, and whether it is a
/// string (its content; the quotes belong to the text around it) or an integer.
#[derive(Debug, Clone, Copy)]
struct ShapeField {
    before: Piece,
    slot: Slot,
    string: bool,
}

/// The layout of the last line [`decode_flat_json`] accepted (see the module docs).
#[derive(Debug, Clone, Default)]
pub(super) struct LineShape {
    /// The line's bytes outside its values.
    text: Vec<u8>,
    fields: Vec<ShapeField>,
    /// The text after the last value.
    after: Piece,
    /// Where the value being recorded ended in the recorded line.
    recorded_to: usize,
    /// False while recording and after a line the field-by-field reader refused.
    learned: bool,
}

impl LineShape {
    /// Decodes a line laid out as the learned one; `None` if it is laid out otherwise.
    #[inline]
    pub(super) fn decode(&self, line: &str, keys: &mut Interner) -> Option<Event> {
        if !self.learned {
            return None;
        }
        let mut cursor = FlatJson::new(line);
        let (mut ts, mut key, mut value) = (0, "", 0);
        for field in &self.fields {
            cursor.piece(&self.text, field.before)?;
            let text = if field.string {
                cursor.string_content()?
            } else {
                let (number, text) = cursor.integer()?;
                match field.slot {
                    Slot::Time => ts = number,
                    Slot::Value => value = number,
                    Slot::Key | Slot::Skipped => {}
                }
                text
            };
            if field.slot == Slot::Key {
                key = text;
            }
        }
        cursor.piece(&self.text, self.after)?;
        (cursor.at == cursor.bytes.len()).then(|| Event {
            ts,
            key: keys.intern(key),
            value,
            origin: weir_connectors::Origin::default(),
        })
    }

    /// Appends `bytes` to the text as a piece.
    fn piece(&mut self, bytes: &[u8]) -> Piece {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        Piece::of(&self.text, start)
    }

    fn start(&mut self) {
        self.text.clear();
        self.fields.clear();
        self.recorded_to = 0;
        self.learned = false;
    }

    /// Records the value at `line[start..end]` and the text before it.
    fn field(&mut self, line: &[u8], (start, end): (usize, usize), slot: Slot, string: bool) {
        let before = self.piece(&line[self.recorded_to..start]);
        self.fields.push(ShapeField {
            before,
            slot,
            string,
        });
        self.recorded_to = end;
    }

    fn finish(&mut self, line: &[u8]) {
        self.after = self.piece(&line[self.recorded_to..]);
        self.learned = true;
    }
}

/// The common case without serde: one flat object whose values are all integers or strings
/// without escapes (`{"ts":1,"key":"k","value":2}`). Anything else (nesting, fractions,
/// escapes, literals, a missing field, trailing text) returns `None` and takes the serde
/// path, which decides and words the error; where both accept a line they agree (tested).
/// On 46-byte lines serde's visitor was about 30 % of the JSONL window job's profile.
/// A line it accepts becomes `shape`; any other leaves `shape` unlearned.
pub(super) fn decode_flat_json(
    line: &str,
    names: &[String; 3],
    read_ts: bool,
    keys: &mut Interner,
    shape: &mut LineShape,
) -> Option<Event> {
    shape.start();
    let mut cursor = FlatJson::new(line);
    cursor.expect(b'{')?;
    let (mut ts, mut key, mut value) = (None, None, None);
    let is = |n: &String, name: &str| same_bytes(n.as_bytes(), name.as_bytes());
    for seen in 0.. {
        let name = cursor.string()?;
        cursor.expect(b':')?;
        // Writers mostly keep one field order; the one of the names is tried first (and
        // taken if no name before it is the same, as serde takes the first).
        let guess = seen % 3;
        let field = if is(&names[guess], name) && !names[..guess].iter().any(|n| is(n, name)) {
            Some(guess)
        } else {
            names.iter().position(|n| is(n, name))
        }
        .filter(|&f| f != 0 || read_ts);
        cursor.skip_space();
        let slot = match field {
            Some(0) => Slot::Time,
            Some(1) => Slot::Key,
            Some(_) => Slot::Value,
            None => Slot::Skipped,
        };
        let string = cursor.bytes.get(cursor.at) == Some(&b'"');
        let span = if string {
            let text = cursor.string()?;
            // The content, without its quotes (they belong to the shape's text).
            let end = cursor.at - 1;
            let span = (end - text.len(), end);
            match slot {
                Slot::Key => key = Some(text),
                Slot::Time | Slot::Value => return None,
                Slot::Skipped => {}
            }
            span
        } else {
            let start = cursor.at;
            let (number, text) = cursor.integer()?;
            match slot {
                Slot::Time => ts = Some(number),
                Slot::Key => key = Some(text),
                Slot::Value => value = Some(number),
                Slot::Skipped => {}
            }
            (start, cursor.at)
        };
        shape.field(cursor.bytes, span, slot, string);
        cursor.skip_space();
        match cursor.bytes.get(cursor.at)? {
            b',' => cursor.at += 1,
            b'}' => {
                cursor.at += 1;
                break;
            }
            _ => return None,
        }
    }
    cursor.skip_space();
    if cursor.at != cursor.bytes.len() {
        return None;
    }
    let event = Event {
        ts: if read_ts { ts? } else { 0 },
        key: keys.intern(key?),
        value: value?,
        origin: weir_connectors::Origin::default(),
    };
    shape.finish(cursor.bytes);
    Some(event)
}

/// The bytes a string of the fast path ends at: its closing quote, or (to leave the line to
/// serde) a backslash or a control character. One table load per byte instead of three tests.
const ENDS_FAST_STRING: [bool; 256] = {
    let mut ends = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        ends[byte] = true;
        byte += 1;
    }
    ends[b'"' as usize] = true;
    ends[b'\\' as usize] = true;
    ends
};

/// The length of a fast-path string's content at the start of `bytes`: the index of the
/// first byte in [`ENDS_FAST_STRING`]. Eight bytes at a time, because a loop's exit at the
/// end of keys of varying length was mispredicted (half of the string scan's time).
#[inline]
fn fast_string_len(bytes: &[u8]) -> Option<usize> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte below `n` (exact for the lowest such byte, which is all
    // that is read: a borrow only reaches the bytes above it).
    let below = |word: u64, n: u64| word.wrapping_sub(ONES * n) & !word & HIGH;
    let mut at = 0;
    while let Some(word) = word_at(bytes, at) {
        let ends = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if ends != 0 {
            return Some(at + (ends.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes[at..]
        .iter()
        .position(|&b| ENDS_FAST_STRING[usize::from(b)])?;
    Some(at + tail)
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// `10^n` for the digit counts of one word.
const POWERS_OF_TEN: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of `word`'s bytes, lowest first, are ASCII digits before the first that is not.
#[inline]
fn leading_digits(word: u64) -> usize {
    // A byte is a digit when its high nibble is 3 and stays 3 once 6 is added (0x30..=0x39).
    // The addition carries out of a byte only from 0xfa up, so it changes nothing at or below
    // the first byte that is not a digit, the only one read.
    let high = 0xf0 * ONES;
    let not_digit =
        ((word & high) ^ (0x30 * ONES)) | ((word.wrapping_add(6 * ONES) & high) ^ (0x30 * ONES));
    (not_digit.trailing_zeros() / 8) as usize
}

/// The value of `word`'s first `digits` bytes (ASCII digits, the first the most significant).
#[inline]
fn digits_value(word: u64, digits: usize) -> u64 {
    if digits == 0 {
        return 0;
    }
    // The digits' values moved to the top, so the zero bytes below stand for leading zeros;
    // then adjacent digits, pairs and fours are combined with one multiply each.
    // (Each lane's product fits the lane; what overflows the top lane is masked off.)
    let value = (word & (0x0f * ONES)) << (8 * (8 - digits));
    let value = (value.wrapping_mul(10) + (value >> 8)) & 0x00ff_00ff_00ff_00ff;
    let value = (value.wrapping_mul(100) + (value >> 16)) & 0x0000_ffff_0000_ffff;
    (value.wrapping_mul(10_000) + (value >> 32)) & 0xffff_ffff
}

/// A position in a line for [`decode_flat_json`].
struct FlatJson<'a> {
    line: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> FlatJson<'a> {
    fn new(line: &'a str) -> Self {
        FlatJson {
            line,
            bytes: line.as_bytes(),
            at: 0,
        }
    }

    fn skip_space(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    /// Skips spaces, then `byte`.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// Skips spaces, then a string without escapes or control characters; its content.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let text = self.string_content()?;
        (self.bytes.get(self.at) == Some(&b'"')).then(|| self.at += 1)?;
        Some(text)
    }

    /// The content of a string whose opening quote is behind: up to the first byte that
    /// ends a fast string (the caller checks that it is the closing quote).
    #[inline]
    fn string_content(&mut self) -> Option<&'a str> {
        let start = self.at;
        let len = fast_string_len(self.bytes.get(start..)?)?;
        self.at = start + len;
        self.line.get(start..self.at)
    }

    /// The bytes of `piece` (of `text`).
    #[inline(always)]
    fn piece(&mut self, text: &[u8], piece: Piece) -> Option<()> {
        let len = piece.end - piece.start;
        let here = self.bytes.get(self.at..self.at + len)?;
        let same = match len {
            ..=16 => short_words(here) == piece.words,
            _ => here == &text[piece.start..piece.end],
        };
        same.then(|| self.at += len)
    }

    /// An integer of at most 18 digits, as JSON writes it (no leading zero, no `-0`), not
    /// followed by a fraction or exponent; its value and its text. Always inlined: with
    /// another decoder call site in the crate (the Kafka source's), LLVM stopped inlining it
    /// into the file source's line loop, and the JSONL window job ran 6.7 % more
    /// instructions (cachegrind, 500 k lines: 687.9 M -> 731.8 M).
    #[inline(always)]
    fn integer(&mut self) -> Option<(i64, &'a str)> {
        let start = self.at;
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let first = self.at;
        // Eight bytes at a time while eight remain (as for strings: a byte loop's exit on
        // numbers of varying length is mispredicted), the last few byte by byte. At most 18
        // digits fit an i64 whatever they are; they are summed as they are scanned.
        let mut magnitude: u64 = 0;
        'scan: {
            while let Some(word) = word_at(self.bytes, self.at) {
                let digits = leading_digits(word);
                if self.at + digits - first > 18 {
                    return None;
                }
                magnitude = magnitude * POWERS_OF_TEN[digits] + digits_value(word, digits);
                self.at += digits;
                if digits < 8 {
                    break 'scan;
                }
            }
            while let Some(digit) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
                if self.at - first == 18 {
                    return None;
                }
                magnitude = magnitude * 10 + u64::from(digit - b'0');
                self.at += 1;
            }
        }
        // At most 18 digits: below 10^18, so the value fits an i64.
        let magnitude = magnitude as i64;
        let digits = self.at - first;
        let leading_zero = digits > 1 && self.bytes[first] == b'0';
        let minus_zero = negative && digits == 1 && self.bytes[first] == b'0';
        if digits == 0 || leading_zero || minus_zero {
            return None;
        }
        if matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let text = self.line.get(start..self.at)?;
        Some((if negative { -magnitude } else { magnitude }, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window_agg::EventDecoder;
    use weir_connectors::Decoder;

    #[test]
    fn a_fast_string_ends_at_the_first_quote_backslash_or_control_byte() {
        let mut state: u64 = 1;
        let alphabet = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xff, b'!', b']',
        ];
        for _ in 0..5_000 {
            let mut bytes = Vec::new();
            for _ in 0..(state >> 60) as usize + 3 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                // Mostly plain letters, so ends fall at every position of a word.
                let pick = (state >> 33) as usize % (alphabet.len() * 4);
                bytes.push(alphabet.get(pick).copied().unwrap_or(b'k'));
            }
            for start in 0..bytes.len() {
                let rest = &bytes[start..];
                let expected = rest.iter().position(|&b| ENDS_FAST_STRING[usize::from(b)]);
                assert_eq!(fast_string_len(rest), expected, "{rest:?}");
            }
        }
    }

    /// Lines with (true) and without (false) a decision of the field-by-field reader, for
    /// names `time`, `user`, `ms`.
    const CASES: [(&str, bool); 25] = [
        (r#"{"time":1767225600000,"user":"k123","ms":42}"#, true),
        // Text between values longer than 16 bytes (compared byte for byte in a shape).
        (
            r#"{"time":1,"user":"a","some_long_other_field":5,"ms":2}"#,
            true,
        ),
        (r#" { "ms" : -5 , "user" : 17 , "time" : 0 } "#, true),
        (r#"{"time":1,"user":"a","ms":2,"other":"x","n":-3}"#, true),
        (r#"{"time":1,"user":"a","ms":2,"time":9}"#, true),
        (r#"{"time":1,"user":"a b","ms":2}"#, true),
        (r#"{"ms":2,"time":1,"user":"b"}"#, true),
        // A raw tab in a string is not JSON: serde says so.
        ("{\"time\":1,\"user\":\"a\t\",\"ms\":2}", false),
        ("{\"time\":1,\"user\t\":\"a\",\"ms\":2}", false),
        (r#"{"time":1,"user":"a"b","ms":2}"#, false),
        (r#"{"time":1,"user":"a","ms":2.0}"#, false),
        (r#"{"time":1,"user":"a","ms":2e3}"#, false),
        (r#"{"time":01,"user":"a","ms":2}"#, false),
        (r#"{"time":1,"user":-0,"ms":2}"#, false),
        (r#"{"time":1,"user":"a","ms":"2"}"#, false),
        (r#"{"time":1,"user":"a"}"#, false),
        (r#"{"time":1,"user":"a","ms":2} x"#, false),
        (r#"{"time":1,"user":"a","ms":2,}"#, false),
        (r#"{"time":1,"user":"a","ms":null}"#, false),
        (r#"{"time":1,"user":"a","ms":2,"x":{"y":1}}"#, false),
        (r#"{"time":1234567890123456789,"user":"a","ms":2}"#, false),
        (
            r#"{"time":999999999999999999,"user":"a","ms":-999999999999999999}"#,
            true,
        ),
        ("", false),
        ("{", false),
        (r#"{"time":1,"user":"a","ms":-}"#, false),
    ];

    fn names() -> [String; 3] {
        ["time".to_string(), "user".to_string(), "ms".to_string()]
    }

    #[test]
    fn the_flat_json_path_agrees_with_serde_wherever_it_decides() {
        let names = names();
        // Names that repeat: the first one counts, as in serde.
        let twice = ["ts".to_string(), "id".to_string(), "id".to_string()];
        let line = r#"{"ts":1,"id":5,"id":5}"#;
        assert_eq!(
            decode_flat_json(
                line,
                &twice,
                true,
                &mut Interner::default(),
                &mut LineShape::default()
            ),
            None
        );
        assert!(EventDecoder::new("ts", "id", "id")
            .decode_json(line)
            .is_err());
        let mut shape = LineShape::default();
        for (line, fast) in CASES {
            let mut keys = Interner::default();
            let flat = decode_flat_json(line, &names, true, &mut keys, &mut shape);
            assert_eq!(flat.is_some(), fast, "{line}");
            let serde = EventDecoder::new("time", "user", "ms").decode_json(line);
            if let Some(event) = flat {
                assert_eq!(serde, Ok(event), "{line}");
            }
            // Without a time field (the source sets event time), the same holds.
            if let Some(event) = decode_flat_json(line, &names, false, &mut keys, &mut shape) {
                let serde = EventDecoder::new("time", "user", "ms")
                    .without_time_field()
                    .decode_json(line);
                assert_eq!(serde, Ok(event), "{line} without the time field");
            }
        }
    }

    /// Each case with one byte deleted or replaced, for lines laid out almost as the cases.
    fn edits_of(line: &str) -> Vec<String> {
        let replacements = [
            "0", "7", "-", "\"", "\\", " ", "a", ".", "e", "E", "}", ",", ":", "\t", "é", "00",
        ];
        let mut edits = vec![line.to_string()];
        edits.extend(replacements.iter().map(|r| format!("{line}{r}")));
        for (at, _) in line.char_indices() {
            let (before, rest) = line.split_at(at);
            let after = &rest[rest.chars().next().map_or(0, char::len_utf8)..];
            edits.push(format!("{before}{after}"));
            for r in replacements {
                edits.push(format!("{before}{r}{after}"));
                edits.push(format!("{before}{r}{rest}"));
            }
        }
        edits
    }

    #[test]
    fn integers_read_eight_digits_at_a_time_equal_the_standard_parse() {
        let mut state: u64 = 7;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 11
        };
        for _ in 0..20_000 {
            let digits = (next() % 21) as u32;
            let number = next() % 10u64.pow(digits.min(19));
            let sign = if next() % 4 == 0 { "-" } else { "" };
            // Numbers with every length against every distance to the line's end.
            let after = [",", "}", ".5", "e3", "x", ":", ""][(next() % 7) as usize];
            let padding = " ".repeat((next() % 9) as usize);
            let line = format!("{sign}{number}{after}{padding}");
            let mut cursor = FlatJson::new(&line);
            let text = format!("{sign}{number}");
            let expected = match after {
                ".5" | "e3" => None,
                _ if text.trim_start_matches('-').len() > 18 || text == "-0" => None,
                _ => Some((text.parse::<i64>().ok(), text.as_str())),
            };
            let read = cursor.integer().map(|(value, text)| (Some(value), text));
            assert_eq!(read, expected, "{line:?}");
        }
    }

    #[test]
    fn a_learned_shape_decodes_only_what_the_field_by_field_reader_would() {
        let names = names();
        let lines: Vec<String> = CASES.iter().flat_map(|(line, _)| edits_of(line)).collect();
        let mut decided = 0;
        for read_ts in [true, false] {
            for (learned_from, fast) in CASES.iter().filter(|(_, fast)| *fast) {
                let mut keys = Interner::default();
                let mut shape = LineShape::default();
                let learned =
                    decode_flat_json(learned_from, &names, read_ts, &mut keys, &mut shape);
                assert_eq!(learned.is_some(), *fast, "{learned_from}");
                assert_eq!(shape.decode(learned_from, &mut keys), learned);
                for line in &lines {
                    let mut fresh = LineShape::default();
                    let flat = decode_flat_json(line, &names, read_ts, &mut keys, &mut fresh);
                    if let Some(event) = &flat {
                        let mut serde = EventDecoder::new("time", "user", "ms");
                        if !read_ts {
                            serde = serde.without_time_field();
                        }
                        assert_eq!(serde.decode_json(line).as_ref(), Ok(event), "{line}");
                    }
                    let Some(event) = shape.decode(line, &mut keys) else {
                        continue;
                    };
                    decided += 1;
                    assert_eq!(
                        flat.as_ref(),
                        Some(&event),
                        "{line} in the shape of {learned_from}, read_ts {read_ts}"
                    );
                }
            }
        }
        // The edits that keep a case's layout (a digit or letter for another) must match it.
        assert!(decided > 1_000, "the shape decided only {decided} lines");
    }

    #[test]
    fn a_refused_line_unlearns_the_shape_and_the_decoder_goes_on() -> Result<(), String> {
        let mut d = EventDecoder::new("time", "user", "ms");
        let first = d.decode(r#"{"time":1,"user":"a","ms":2}"#)?;
        assert_eq!(first.value, 2);
        assert!(d.decode(r#"{"time":1,"user":"a","ms":2.5}"#).is_err());
        assert_eq!(
            d.decode(r#"{"time":3,"user":"b","ms":4}"#)?,
            Event {
                ts: 3,
                key: "b".into(),
                value: 4,
                origin: weir_connectors::Origin::default(),
            }
        );
        assert_eq!(d.decode(r#"{"ms":5,"user":"c","time":6}"#)?.ts, 6);
        Ok(())
    }
}
