//! Schema evolution: events that carry a version are lifted to the current version by
//! registered *upcasters* before the job sees them, so old events (a replayed log, a slow
//! producer) keep working after a schema change.
//!
//! # Rules
//! - The version is an integer field of the JSON object (`"version"` by default). An event
//!   without it is of the version [`Upcasting::missing_version_is`] says, or rejected.
//! - An upcaster lifts version `v` to `v + 1` by editing the JSON object; versions are lifted
//!   one step at a time up to the current one, then the object is deserialized.
//! - A version newer than the current one, older than the oldest upcaster, or a failing
//!   upcaster rejects the line: it goes to the dead-letter output with the reason, like any
//!   line that does not decode. Nothing is guessed.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::format::Decoder;
use std::sync::Arc;

/// Shared by the clones of a decoder (one per reader of a file read by several workers).
type Upcaster = Arc<dyn Fn(&mut Map<String, Value>) -> Result<(), String> + Send + Sync>;

/// A [`Decoder`] of versioned JSON lines into `T`, the current version.
pub struct Upcasting<T> {
    current: u64,
    field: String,
    missing: Option<u64>,
    /// `upcasters[i]` lifts version `oldest + i` to `oldest + i + 1`.
    upcasters: Vec<Upcaster>,
    oldest: u64,
    _item: PhantomData<fn() -> T>,
}

impl<T> Clone for Upcasting<T> {
    fn clone(&self) -> Self {
        Upcasting {
            current: self.current,
            field: self.field.clone(),
            missing: self.missing,
            upcasters: self.upcasters.clone(),
            oldest: self.oldest,
            _item: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Upcasting<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasting")
            .field("current", &self.current)
            .field("oldest", &self.oldest)
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

impl<T> Upcasting<T> {
    /// Decodes events of version `current` into `T`; no older versions until upcasters are
    /// added.
    pub fn current(current: u64) -> Self {
        Upcasting {
            current,
            field: "version".into(),
            missing: None,
            upcasters: Vec::new(),
            oldest: current,
            _item: PhantomData,
        }
    }

    /// The field holding the version (default `version`).
    pub fn version_field(mut self, field: &str) -> Self {
        self.field = field.to_string();
        self
    }

    /// Events without a version field are of version `version` (the schema before versions
    /// were introduced, typically 1).
    pub fn missing_version_is(mut self, version: u64) -> Self {
        self.missing = Some(version);
        self
    }

    /// Adds the upcaster from version `oldest - 1` to the oldest version known so far: add
    /// them newest first (`v2 -> v3`, then `v1 -> v2`).
    pub fn upcast_from(
        mut self,
        from: u64,
        lift: impl Fn(&mut Map<String, Value>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        assert_eq!(
            from + 1,
            self.oldest,
            "upcasters are added newest first, each one version older"
        );
        self.upcasters.insert(0, Arc::new(lift));
        self.oldest = from;
        self
    }

    fn lift(&self, object: &mut Map<String, Value>) -> Result<(), String> {
        let version = match object.get(&self.field) {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("field `{}` is not a version number: {v}", self.field))?,
            None => self
                .missing
                .ok_or_else(|| format!("no `{}` field", self.field))?,
        };
        if version < self.oldest || version > self.current {
            return Err(format!(
                "unknown schema version {version} (this job reads versions {} to {})",
                self.oldest, self.current
            ));
        }
        for v in version..self.current {
            let lift = &self.upcasters[(v - self.oldest) as usize];
            lift(object).map_err(|e| format!("upcasting version {v} to {}: {e}", v + 1))?;
        }
        object.insert(self.field.clone(), Value::from(self.current));
        Ok(())
    }
}

impl<T: DeserializeOwned + weir_engine::Data> Decoder for Upcasting<T> {
    type Item = T;

    fn decode(&mut self, line: &str) -> Result<T, String> {
        let mut value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let object = value
            .as_object_mut()
            .ok_or("a versioned event must be a JSON object")?;
        self.lift(object)?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Deserialize)]
    struct OrderV3 {
        id: String,
        currency: String,
        total_cents: i64,
    }

    fn decoder() -> Upcasting<OrderV3> {
        Upcasting::current(3)
            .missing_version_is(1)
            .upcast_from(2, |o| {
                let total = o
                    .remove("total")
                    .and_then(|t| t.as_f64())
                    .ok_or("no total")?;
                o.insert(
                    "total_cents".into(),
                    Value::from((total * 100.0).round() as i64),
                );
                Ok(())
            })
            .upcast_from(1, |o| {
                o.entry("currency").or_insert("USD".into());
                Ok(())
            })
    }

    #[test]
    fn old_versions_are_lifted_step_by_step() {
        let mut d = decoder();
        let expected = |currency: &str| OrderV3 {
            id: "o1".into(),
            currency: currency.into(),
            total_cents: 1250,
        };
        assert_eq!(
            d.decode(r#"{"id":"o1","total":12.5}"#),
            Ok(expected("USD")),
            "no version: v1"
        );
        assert_eq!(
            d.decode(r#"{"version":2,"id":"o1","currency":"EUR","total":12.5}"#),
            Ok(expected("EUR"))
        );
        assert_eq!(
            d.decode(r#"{"version":3,"id":"o1","currency":"EUR","total_cents":1250}"#),
            Ok(expected("EUR"))
        );
    }

    #[test]
    fn unknown_versions_and_failing_upcasters_are_rejected_with_a_reason() {
        let mut d = decoder();
        let err = d
            .decode(r#"{"version":4,"id":"o1","currency":"EUR","total_cents":1}"#)
            .unwrap_err();
        assert_eq!(
            err,
            "unknown schema version 4 (this job reads versions 1 to 3)"
        );
        let err = d.decode(r#"{"version":"two","id":"o1"}"#).unwrap_err();
        assert!(err.contains("not a version number"), "{err}");
        let err = d.decode(r#"{"version":1,"id":"o1"}"#).unwrap_err();
        assert_eq!(err, "upcasting version 2 to 3: no total");
        let strict = Upcasting::<OrderV3>::current(3).decode(r#"{"id":"o1"}"#);
        assert_eq!(strict.unwrap_err(), "no `version` field");
    }
}
