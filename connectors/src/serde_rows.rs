//! Any `serde` type read from records that are not JSON: a CSV line by its header's column
//! names (what [`crate::Json`] does with a CSV input) and an Arrow row by its batch's column
//! names ([`ArrowRows`]), so that one event type reads JSON lines, CSV and Arrow IPC alike.
//!
//! Each field is deserialized as the type asks: a CSV field's text is parsed as the number,
//! boolean or string the type's field is, an empty field is `None`; an Arrow cell gives its
//! column's value (integers, floats, booleans, strings plain or dictionary-encoded,
//! millisecond timestamps as integers), a null is `None`. Columns the type does not have are
//! skipped without being looked at. A value that does not fit its field is an error naming
//! the column, which the source turns into a dead letter of that line or row.

use std::fmt;
use std::marker::PhantomData;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMillisecondType,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use serde::de::value::{Error as ValueError, MapDeserializer};
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};

use crate::arrow::RowDecoder;
use crate::format::split_csv;

/// Decodes one CSV line into `T`, its fields named by `columns` (the header row).
pub(crate) fn csv_record<T: DeserializeOwned>(columns: &[String], line: &str) -> Result<T, String> {
    let mut fields = Vec::with_capacity(columns.len());
    split_csv(line, |f| fields.push(f.to_string()))?;
    if fields.len() != columns.len() {
        return Err(format!(
            "{} fields where the header has {} columns",
            fields.len(),
            columns.len()
        ));
    }
    let cells = columns.iter().zip(&fields).map(|(column, text)| {
        let field = CsvField { column, text };
        (column.as_str(), field)
    });
    deserialize_map(MapDeserializer::new(cells))
}

/// `T` from the (column, value) pairs of one record.
fn deserialize_map<'de, T, I, V>(map: MapDeserializer<'de, I, ValueError>) -> Result<T, String>
where
    T: DeserializeOwned,
    I: Iterator<Item = (&'de str, V)>,
    V: IntoDeserializer<'de, ValueError>,
{
    // By value, the map deserializer also checks that every pair was taken.
    T::deserialize(map).map_err(|e| e.to_string())
}

/// The error of a value that does not fit its field.
fn unfit(column: &str, what: impl fmt::Display) -> ValueError {
    de::Error::custom(format_args!("column `{column}`: {what}"))
}

/// The methods a CSV field and an Arrow cell deserialize alike: `None` where `$is_null`
/// says so, a newtype as its content, a unit enum variant by the name `$text` gives, and a
/// field the type does not have skipped without being looked at.
macro_rules! shared_methods {
    ($is_null:expr, $text:expr) => {
        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            let is_null: fn(&Self) -> bool = $is_null;
            match is_null(&self) {
                true => visitor.visit_none(),
                false => visitor.visit_some(self),
            }
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            let text: fn(&Self) -> Option<&'de str> = $text;
            match text(&self) {
                Some(text) => visitor.visit_enum(text.into_deserializer()),
                None => Err(unfit(self.column, "an enum is read from a string")),
            }
        }

        fn deserialize_ignored_any<V: Visitor<'de>>(
            self,
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            visitor.visit_unit()
        }
    };
}

/// One CSV field, parsed as its type asks.
struct CsvField<'de> {
    column: &'de str,
    text: &'de str,
}

impl<'de> IntoDeserializer<'de, ValueError> for CsvField<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl CsvField<'_> {
    fn parse<N: std::str::FromStr>(&self, what: &str) -> Result<N, ValueError> {
        self.text
            .trim()
            .parse()
            .map_err(|_| unfit(self.column, format_args!("`{}` is not {what}", self.text)))
    }
}

/// `deserialize_*` methods that parse the text as a number type and visit it.
macro_rules! parsed {
    ($($method:ident => $visit:ident, $ty:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            visitor.$visit(self.parse::<$ty>($what)?)
        }
    )*};
}

impl<'de> Deserializer<'de> for CsvField<'de> {
    type Error = ValueError;

    /// For a field whose type takes anything (an untagged enum, a JSON value): the number
    /// or boolean the text reads as, else the text.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        let text = self.text.trim();
        if let Ok(n) = text.parse::<i64>() {
            visitor.visit_i64(n)
        } else if let Ok(n) = text.parse::<u64>() {
            visitor.visit_u64(n)
        } else if let Ok(x) = text.parse::<f64>() {
            visitor.visit_f64(x)
        } else if let Ok(b) = text.parse::<bool>() {
            visitor.visit_bool(b)
        } else {
            visitor.visit_borrowed_str(self.text)
        }
    }

    parsed! {
        deserialize_bool => visit_bool, bool, "`true` or `false`";
        deserialize_i8 => visit_i64, i64, "an integer";
        deserialize_i16 => visit_i64, i64, "an integer";
        deserialize_i32 => visit_i64, i64, "an integer";
        deserialize_i64 => visit_i64, i64, "an integer";
        deserialize_u8 => visit_u64, u64, "a non-negative integer";
        deserialize_u16 => visit_u64, u64, "a non-negative integer";
        deserialize_u32 => visit_u64, u64, "a non-negative integer";
        deserialize_u64 => visit_u64, u64, "a non-negative integer";
        deserialize_f32 => visit_f64, f64, "a number";
        deserialize_f64 => visit_f64, f64, "a number";
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_borrowed_str(self.text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_borrowed_str(self.text)
    }

    shared_methods!(|field: &Self| field.text.is_empty(), |field: &Self| Some(
        field.text
    ));

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier
    }
}

/// Decodes the rows of Arrow record batches into any `serde` type, by column name (see
/// the [module](self)).
pub struct ArrowRows<T> {
    columns: Vec<(String, ArrayRef)>,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ArrowRows<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrowRows").finish_non_exhaustive()
    }
}

impl<T> Default for ArrowRows<T> {
    fn default() -> Self {
        ArrowRows {
            columns: Vec::new(),
            _item: PhantomData,
        }
    }
}

impl<T: DeserializeOwned + weir_engine::Data> RowDecoder for ArrowRows<T> {
    type Item = T;

    fn bind(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let schema = batch.schema_ref();
        self.columns = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, array)| (field.name().clone(), array.clone()))
            .collect();
        Ok(())
    }

    fn decode(&mut self, row: usize) -> Result<T, String> {
        let cells = self.columns.iter().map(|(column, array)| {
            let cell = ArrowCell { column, array, row };
            (column.as_str(), cell)
        });
        deserialize_map(MapDeserializer::new(cells))
    }
}

/// One cell of an Arrow column.
struct ArrowCell<'de> {
    column: &'de str,
    array: &'de ArrayRef,
    row: usize,
}

impl<'de> IntoDeserializer<'de, ValueError> for ArrowCell<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> ArrowCell<'de> {
    /// The string of a Utf8 cell (plain or dictionary-encoded), if it is one.
    fn str(&self) -> Option<&'de str> {
        let (array, row) = (self.array, self.row);
        match array.data_type() {
            DataType::Utf8 => Some(array.as_string::<i32>().value(row)),
            DataType::LargeUtf8 => Some(array.as_string::<i64>().value(row)),
            DataType::Dictionary(key, value)
                if **key == DataType::Int32 && **value == DataType::Utf8 =>
            {
                let dictionary = array.as_dictionary::<Int32Type>();
                let index = usize::try_from(dictionary.keys().value(row)).ok()?;
                let strings = dictionary.values().as_string::<i32>();
                (index < strings.len()).then(|| strings.value(index))
            }
            _ => None,
        }
    }
}

impl<'de> Deserializer<'de> for ArrowCell<'de> {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        let (array, row) = (self.array, self.row);
        if array.is_null(row) {
            return visitor.visit_none();
        }
        // The value of the cell in a primitive column of type `$t`.
        macro_rules! value {
            ($t:ty) => {
                array.as_primitive::<$t>().value(row)
            };
        }
        match array.data_type() {
            DataType::Boolean => visitor.visit_bool(array.as_boolean().value(row)),
            DataType::Int8 => visitor.visit_i64(value!(Int8Type).into()),
            DataType::Int16 => visitor.visit_i64(value!(Int16Type).into()),
            DataType::Int32 => visitor.visit_i64(value!(Int32Type).into()),
            DataType::Int64 => visitor.visit_i64(value!(Int64Type)),
            DataType::UInt8 => visitor.visit_u64(value!(UInt8Type).into()),
            DataType::UInt16 => visitor.visit_u64(value!(UInt16Type).into()),
            DataType::UInt32 => visitor.visit_u64(value!(UInt32Type).into()),
            DataType::UInt64 => visitor.visit_u64(value!(UInt64Type)),
            DataType::Float32 => visitor.visit_f64(value!(Float32Type).into()),
            DataType::Float64 => visitor.visit_f64(value!(Float64Type)),
            // Event times are epoch milliseconds in weir.
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                visitor.visit_i64(value!(TimestampMillisecondType))
            }
            other => match self.str() {
                Some(text) => visitor.visit_borrowed_str(text),
                None => Err(unfit(
                    self.column,
                    format_args!("a {other} column is not read into serde types"),
                )),
            },
        }
    }

    shared_methods!(|cell: &Self| cell.array.is_null(cell.row), |cell: &Self| {
        cell.str().filter(|_| !cell.array.is_null(cell.row))
    });

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{DictionaryArray, Int64Array, StringArray};
    use arrow_schema::{Field, Schema};
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Deposit,
        Withdrawal,
    }

    #[derive(Debug, Clone, PartialEq, Deserialize)]
    struct Row {
        ts: i64,
        account: String,
        kind: Kind,
        amount: Option<f64>,
    }

    #[test]
    fn csv_fields_take_their_types_by_column_name() -> Result<(), String> {
        let columns = ["amount", "kind", "ts", "account", "note"].map(String::from);
        let row: Row = csv_record(&columns, "12.5,deposit,1000,\"a,1\",x")?;
        let expected = Row {
            ts: 1000,
            account: "a,1".into(),
            kind: Kind::Deposit,
            amount: Some(12.5),
        };
        assert_eq!(row, expected);
        let empty: Row = csv_record(&columns, ",withdrawal,5,b,")?;
        assert_eq!(empty.amount, None);
        let bad = csv_record::<Row>(&columns, "1,deposit,soon,a,x").unwrap_err();
        assert!(
            bad.contains("column `ts`: `soon` is not an integer"),
            "{bad}"
        );
        let short = csv_record::<Row>(&columns, "1,deposit").unwrap_err();
        assert!(short.contains("2 fields where the header has 5"), "{short}");
        Ok(())
    }

    #[test]
    fn arrow_rows_take_their_types_by_column_name() -> Result<(), Box<dyn std::error::Error>> {
        let schema = Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new(
                "account",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("kind", DataType::Utf8, false),
            Field::new("amount", DataType::Int64, true),
        ]);
        let accounts: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(accounts),
                Arc::new(StringArray::from(vec!["deposit", "withdrawal", "loan"])),
                Arc::new(Int64Array::from(vec![Some(10), None, Some(5)])),
            ],
        )?;
        let mut rows = ArrowRows::<Row>::default();
        rows.bind(&batch)?;
        let second = rows.decode(1)?;
        let expected = Row {
            ts: 2,
            account: "b".into(),
            kind: Kind::Withdrawal,
            amount: None,
        };
        assert_eq!(second, expected);
        assert_eq!(rows.decode(0)?.amount, Some(10.0));
        let loan = rows.decode(2).unwrap_err();
        assert!(loan.contains("unknown variant `loan`"), "{loan}");
        Ok(())
    }
}
