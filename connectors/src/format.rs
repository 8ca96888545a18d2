//! Record formats: how one line of input becomes one event.
//!
//! A [`Decoder`] turns a line into an event or says why it cannot; the file source sends
//! the lines it rejects to the dead-letter output. CSV files start with a header row,
//! handed to [`Decoder::header`] once. Quoted CSV fields (`"a,b"`, `""` for a quote) are
//! supported; a field may not contain a line break.

use crate::origin::Origin;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::DeserializeOwned;

/// How lines of an input are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    JsonLines,
    /// Comma-separated values with a header row.
    Csv,
}

impl Format {
    /// The format a file name implies: `.csv` is CSV, anything else JSON lines.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::JsonLines,
        }
    }

    /// Parses `json`, `jsonl` or `csv`.
    pub fn parse(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "json" | "jsonl" | "ndjson" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// Turns lines into events.
///
/// A file read by several workers has a reader per worker, each with a clone of the
/// decoder (as Flink gives each parallel instance a copy of its deserialization schema).
pub trait Decoder: Clone + Send + 'static {
    /// The decoded event.
    type Item: weir_engine::Data;

    /// Receives the header row of a CSV input; an error here stops the job (the input does
    /// not fit the job at all).
    fn header(&mut self, line: &str) -> Result<(), String> {
        let _ = line;
        Ok(())
    }

    /// Decodes one line (without its line break), or says what is wrong with it.
    fn decode(&mut self, line: &str) -> Result<Self::Item, String>;

    /// Stores where a decoded item was read, for items that carry it (see
    /// [`crate::origin`]); sources call it on every item they keep. The default does
    /// nothing (and costs nothing).
    #[inline]
    fn set_origin(&self, item: &mut Self::Item, origin: Origin) {
        let _ = (item, origin);
    }
}

/// Decodes JSON lines into any `serde` type; the lines of a CSV input (which has a header
/// row) by their column names instead (see [`crate::serde_rows`]), so one event type reads
/// either.
pub struct Json<T> {
    /// The CSV header's column names, once a CSV input gave one.
    csv_columns: Option<Vec<String>>,
    _item: PhantomData<fn() -> T>,
}

impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Json {
            csv_columns: self.csv_columns.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Json")
    }
}

impl<T> Default for Json<T> {
    fn default() -> Self {
        Json {
            csv_columns: None,
            _item: PhantomData,
        }
    }
}

impl<T: DeserializeOwned + weir_engine::Data> Decoder for Json<T> {
    type Item = T;

    fn header(&mut self, line: &str) -> Result<(), String> {
        let mut columns = Vec::new();
        split_csv(line, |name| columns.push(name.trim().to_string()))?;
        self.csv_columns = Some(columns);
        Ok(())
    }

    fn decode(&mut self, line: &str) -> Result<T, String> {
        match &self.csv_columns {
            None => serde_json::from_str(line).map_err(|e| e.to_string()),
            Some(columns) => crate::serde_rows::csv_record(columns, line),
        }
    }
}

/// Column positions of named fields in a CSV header.
#[derive(Debug, Clone, Default)]
pub struct CsvHeader {
    names: Vec<String>,
}

impl CsvHeader {
    /// Parses a header row.
    pub fn parse(line: &str) -> Result<CsvHeader, String> {
        let mut names = Vec::new();
        split_csv(line, |f| names.push(f.trim().to_string()))?;
        Ok(CsvHeader { names })
    }

    /// The column of `name`, or an error naming the columns that exist.
    pub fn position(&self, name: &str) -> Result<usize, String> {
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "no column `{name}` in the CSV header (columns: {})",
                self.names.join(", ")
            )
        })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if the header has no columns.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Splits one CSV line into fields, calling `field` for each (unquoted, with `""` turned
/// into `"`). Fails on an unterminated quote.
pub fn split_csv(line: &str, mut field: impl FnMut(&str)) -> Result<(), String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut unquoted = String::new();
    loop {
        if bytes.get(i) == Some(&b'"') {
            unquoted.clear();
            i += 1;
            loop {
                match line[i..].find('"') {
                    None => return Err("unterminated quoted CSV field".into()),
                    Some(q) => {
                        unquoted.push_str(&line[i..i + q]);
                        i += q + 1;
                        if bytes.get(i) == Some(&b'"') {
                            unquoted.push('"');
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            field(&unquoted);
            match bytes.get(i) {
                None => return Ok(()),
                Some(b',') => i += 1,
                Some(_) => return Err("unexpected text after a quoted CSV field".into()),
            }
        } else {
            let end = line[i..].find(',').map_or(line.len(), |c| i + c);
            field(&line[i..end]);
            if end == line.len() {
                return Ok(());
            }
            i = end + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        split_csv(line, |f| v.push(f.to_string()))?;
        Ok(v)
    }

    #[test]
    fn csv_fields() -> Result<(), String> {
        assert_eq!(fields("a,b,c")?, ["a", "b", "c"]);
        assert_eq!(fields("a,,c,")?, ["a", "", "c", ""]);
        assert_eq!(
            fields(r#""x,y",2,"say ""hi""""#)?,
            ["x,y", "2", r#"say "hi""#]
        );
        assert!(fields(r#""open,1"#).is_err());
        assert!(fields(r#""a"b,1"#).is_err());
        Ok(())
    }

    #[test]
    fn header_positions() -> Result<(), String> {
        let h = CsvHeader::parse("ts, key ,value")?;
        assert_eq!(h.position("key")?, 1);
        assert!(h
            .position("nope")
            .unwrap_err()
            .contains("columns: ts, key, value"));
        Ok(())
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_path(Path::new("x.CSV")), Format::Csv);
        assert_eq!(Format::from_path(Path::new("x.jsonl")), Format::JsonLines);
        assert_eq!(Format::parse("csv"), Some(Format::Csv));
        assert_eq!(Format::parse("xml"), None);
    }
}
