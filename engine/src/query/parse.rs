//! Parsing what a caller asks: keys (text into the table's key type), the filter grammar
//! (`FIELD OP NUMBER` with `>`, `>=`, `<`, `<=`, `=`) and scan parameters with their limits.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{QueryError, Scan, MAX_LIMIT};

/// A comparison of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `=`
    Eq,
}

/// A condition on one numeric field of a value: `balance>10000`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The field of the JSON object value.
    pub field: String,
    /// The comparison.
    pub cmp: Cmp,
    /// What the field is compared with.
    pub value: f64,
}

impl Filter {
    /// Parses `FIELD OP NUMBER`, e.g. `balance>10000` or `count <= 3`.
    pub fn parse(text: &str) -> Result<Filter, QueryError> {
        let bad = |why: &str| {
            QueryError::BadQuery(format!(
                "filter `{text}`: {why}; write FIELD OP NUMBER with OP one of > >= < <= =, \
                 e.g. balance>10000"
            ))
        };
        let at = text
            .find(['>', '<', '='])
            .ok_or_else(|| bad("no comparison"))?;
        let (field, rest) = text.split_at(at);
        let (cmp, number) = if let Some(n) = rest.strip_prefix(">=") {
            (Cmp::Ge, n)
        } else if let Some(n) = rest.strip_prefix("<=") {
            (Cmp::Le, n)
        } else if let Some(n) = rest.strip_prefix('>') {
            (Cmp::Gt, n)
        } else if let Some(n) = rest.strip_prefix('<') {
            (Cmp::Lt, n)
        } else {
            (Cmp::Eq, &rest[1..])
        };
        let field = field.trim();
        if field.is_empty() {
            return Err(bad("no field before the comparison"));
        }
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| bad("what follows the comparison is not a number"))?;
        if !value.is_finite() {
            return Err(bad("the number is not finite"));
        }
        Ok(Filter {
            field: field.to_string(),
            cmp,
            value,
        })
    }

    /// True if `value` is an object whose field is a number that passes the comparison.
    pub fn accepts(&self, value: &Value) -> bool {
        let Some(x) = value.get(&self.field).and_then(Value::as_f64) else {
            return false;
        };
        match self.cmp {
            Cmp::Gt => x > self.value,
            Cmp::Ge => x >= self.value,
            Cmp::Lt => x < self.value,
            Cmp::Le => x <= self.value,
            Cmp::Eq => x == self.value,
        }
    }
}

/// A key given as text, as the table's key type: a string key is the text itself; other
/// keys (numbers, tuples) are the text read as JSON.
pub fn parse_key<K: DeserializeOwned>(text: &str) -> Result<K, String> {
    match serde_json::from_value(Value::String(text.to_string())) {
        Ok(key) => Ok(key),
        Err(as_string) => serde_json::from_str(text).map_err(|_| as_string.to_string()),
    }
}

impl Scan {
    /// A scan from request parameters `from`, `to`, `prefix`, `filter` and `limit`; any
    /// other parameter is refused (a misspelled one would otherwise widen the answer).
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Scan, QueryError> {
        let mut scan = Scan::default();
        for (name, value) in params {
            match name {
                "from" => scan.from = Some(value.to_string()),
                "to" => scan.to = Some(value.to_string()),
                "prefix" => scan.prefix = Some(value.to_string()),
                "filter" => scan.filter = Some(Filter::parse(value)?),
                "limit" => scan.limit = parse_limit(value)?,
                other => {
                    return Err(QueryError::BadQuery(format!(
                        "unknown parameter `{other}`: a scan takes from, to, prefix, filter \
                         and limit"
                    )))
                }
            }
        }
        Ok(scan)
    }
}

/// A scan limit: a number from 1 to [`MAX_LIMIT`].
fn parse_limit(text: &str) -> Result<usize, QueryError> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(QueryError::BadQuery(format!(
            "limit={text}: give a number from 1 to {MAX_LIMIT}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::DEFAULT_LIMIT;
    use serde_json::json;

    #[test]
    fn filters_parse_every_comparison_and_judge_the_field() {
        let cases = [
            ("balance>10000", Cmp::Gt),
            ("balance >= 10000", Cmp::Ge),
            ("balance<10000", Cmp::Lt),
            ("balance<=10000", Cmp::Le),
            ("balance=10000", Cmp::Eq),
        ];
        for (text, cmp) in cases {
            let f = Filter::parse(text).expect(text);
            assert_eq!(
                (f.field.as_str(), f.cmp, f.value),
                ("balance", cmp, 10000.0)
            );
        }
        let over = Filter::parse("balance>10000").expect("parses");
        assert!(over.accepts(&json!({"balance": 10000.5})));
        assert!(!over.accepts(&json!({"balance": 10000})));
        assert!(
            !over.accepts(&json!({"other": 20000})),
            "a missing field never matches"
        );
        assert!(
            !over.accepts(&json!({"balance": "20000"})),
            "nor a non-number"
        );
        assert!(Filter::parse("balance<=-5.5")
            .expect("negative")
            .accepts(&json!({"balance": -6})));
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        for (text, why) in [
            ("balance", "no comparison"),
            (">5", "no field"),
            ("balance>ten", "not a number"),
            ("balance>", "not a number"),
            ("balance>inf", "not finite"),
        ] {
            let e = Filter::parse(text).expect_err(text).to_string();
            assert!(e.contains(why) && e.contains(text), "{text}: {e}");
        }
    }

    #[test]
    fn scan_parameters_have_a_default_and_a_maximum_limit() {
        assert_eq!(Scan::from_params([]).expect("empty").limit, DEFAULT_LIMIT);
        let scan =
            Scan::from_params([("from", "a1"), ("to", "a5"), ("limit", "10000")]).expect("valid");
        assert_eq!(
            (scan.from.as_deref(), scan.to.as_deref(), scan.limit),
            (Some("a1"), Some("a5"), MAX_LIMIT)
        );
        for limit in ["0", "10001", "-1", "many"] {
            let e = Scan::from_params([("limit", limit)]).expect_err(limit);
            assert!(e.to_string().contains("1 to 10000"), "{e}");
        }
        let e = Scan::from_params([("form", "a")]).expect_err("misspelled");
        assert!(e.to_string().contains("unknown parameter `form`"), "{e}");
    }

    #[test]
    fn keys_parse_as_strings_first_then_as_json() {
        assert_eq!(parse_key::<String>("a17"), Ok("a17".to_string()));
        assert_eq!(parse_key::<String>("42"), Ok("42".to_string()));
        assert_eq!(parse_key::<u64>("42"), Ok(42));
        assert!(parse_key::<u64>("a17").is_err());
    }

    #[test]
    fn keys_of_derived_types_parse_as_they_serialize() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct AccountId(String);
        #[derive(Debug, PartialEq, serde::Deserialize)]
        enum Currency {
            Eur,
            Other { code: String },
        }
        // A newtype is its inner value; a tuple and an enum are their JSON.
        assert_eq!(parse_key("acct-1"), Ok(AccountId("acct-1".into())));
        assert_eq!(
            parse_key(r#"["acct-1",2,"Eur"]"#),
            Ok((AccountId("acct-1".into()), 2_u32, Currency::Eur))
        );
        assert_eq!(
            parse_key(r#"{"Other":{"code":"CHF"}}"#),
            Ok(Currency::Other { code: "CHF".into() })
        );
    }
}
