//! `window-agg` events as Arrow IPC files: the row decoder of the job's Arrow input, and the
//! writer behind `weir gen events --output FILE.arrow`.
//!
//! The columns are found by the job's field names (`--ts-field`, `--key-field`,
//! `--value-field`): time and value are 64-bit integers (time may also be an Arrow
//! millisecond timestamp), the key a string column, plain or dictionary-encoded. A
//! dictionary's strings are interned once (again only when a batch brings another
//! dictionary), so a row's key costs one reference count, where a JSON line's costs a
//! parse and a hash lookup.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int64Array, PrimitiveArray, RecordBatch, StringArray,
};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use weir_connectors::RowDecoder;
use weir_engine::intern::Interner;

use crate::generate::{EventStreamSpec, GeneratedEvents};
use crate::window_agg::Event;

/// Decodes [`Event`]s from the rows of record batches, by column name.
#[derive(Debug)]
pub struct EventColumns {
    names: [String; 3],
    keys: Interner,
    bound: Option<Bound>,
}

/// The columns of the batch being read.
#[derive(Debug)]
struct Bound {
    ts: PrimitiveArray<Int64Type>,
    value: PrimitiveArray<Int64Type>,
    key: KeyColumn,
}

#[derive(Debug)]
enum KeyColumn {
    Plain(StringArray),
    /// Row -> dictionary index, and the dictionary with each entry interned (`None` for a
    /// null).
    Dictionary(PrimitiveArray<Int32Type>, ArrayRef, Vec<Option<Arc<str>>>),
}

impl EventColumns {
    /// Reads time, key and value from the columns with these names.
    pub fn new(ts: &str, key: &str, value: &str) -> Self {
        EventColumns {
            names: [ts.to_string(), key.to_string(), value.to_string()],
            keys: Interner::default(),
            bound: None,
        }
    }
}

/// The column `name` of `batch`, or why there is none.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!("no column `{name}` (the columns: {})", names.join(", "))
    })
}

/// An integer column (a millisecond timestamp counts as one).
fn integers(array: &ArrayRef, name: &str) -> Result<PrimitiveArray<Int64Type>, String> {
    if let Some(ints) = array.as_primitive_opt::<Int64Type>() {
        return Ok(ints.clone());
    }
    if let Some(times) = array.as_primitive_opt::<TimestampMillisecondType>() {
        return Ok(times.reinterpret_cast::<Int64Type>());
    }
    Err(format!(
        "column `{name}` is {}, not Int64 (or Timestamp(ms))",
        array.data_type()
    ))
}

impl RowDecoder for EventColumns {
    type Item = Event;

    #[inline]
    fn set_origin(&self, item: &mut Event, origin: weir_connectors::Origin) {
        item.origin = origin;
    }

    fn bind(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let [ts, key, value] = &self.names;
        let key_array = column(batch, key)?;
        let key_column = if let Some(strings) = key_array.as_string_opt::<i32>() {
            KeyColumn::Plain(strings.clone())
        } else if let Some(dictionary) = key_array.as_dictionary_opt::<Int32Type>() {
            let names = dictionary.values().as_string_opt::<i32>().ok_or_else(|| {
                format!(
                    "column `{key}` is a dictionary of {}, not of Utf8",
                    dictionary.values().data_type()
                )
            })?;
            // The IPC file format has one dictionary for all batches: interned once.
            let same = match self.bound.take().map(|b| b.key) {
                Some(KeyColumn::Dictionary(_, values, interned))
                    if Arc::ptr_eq(&values, dictionary.values()) =>
                {
                    Some(interned)
                }
                _ => None,
            };
            let interned = same.unwrap_or_else(|| {
                (0..names.len())
                    .map(|i| names.is_valid(i).then(|| self.keys.intern(names.value(i))))
                    .collect()
            });
            KeyColumn::Dictionary(
                dictionary.keys().clone(),
                dictionary.values().clone(),
                interned,
            )
        } else {
            return Err(format!(
                "column `{key}` is {}, not Utf8 (or a dictionary of Utf8 with Int32 keys)",
                key_array.data_type()
            ));
        };
        self.bound = Some(Bound {
            ts: integers(column(batch, ts)?, ts)?,
            value: integers(column(batch, value)?, value)?,
            key: key_column,
        });
        Ok(())
    }

    #[inline]
    fn decode(&mut self, row: usize) -> Result<Event, String> {
        let bound = self.bound.as_ref().ok_or("no record batch bound")?;
        let null = |name: &str| format!("column `{name}` is null");
        if bound.ts.is_null(row) {
            return Err(null(&self.names[0]));
        }
        if bound.value.is_null(row) {
            return Err(null(&self.names[2]));
        }
        let key = match &bound.key {
            KeyColumn::Plain(strings) => strings
                .is_valid(row)
                .then(|| self.keys.intern(strings.value(row))),
            KeyColumn::Dictionary(indices, _, interned) => indices
                .is_valid(row)
                .then(|| indices.value(row))
                .and_then(|i| interned.get(usize::try_from(i).ok()?).cloned().flatten()),
        };
        Ok(Event {
            ts: bound.ts.value(row),
            key: key.ok_or_else(|| null(&self.names[1]))?,
            value: bound.value.value(row),
            origin: weir_connectors::Origin::default(),
        })
    }
}

/// Rows per record batch that `weir gen` writes.
const GEN_BATCH_ROWS: usize = 64 * 1024;

/// Writes the `events` stream as an Arrow IPC file: `ts` and `value` Int64, `key` a
/// dictionary (one for the whole file, as the IPC file format requires) of `k0`, `k1`, ...
pub fn write_events_arrow(path: &Path, spec: EventStreamSpec) -> anyhow::Result<()> {
    let key_count = i32::try_from(spec.keys.max(1))
        .ok()
        .filter(|&k| k <= 1 << 20)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--keys {}: an Arrow file holds its keys in one dictionary of at most 1,048,576; \
                 write JSON lines for more",
                spec.keys
            )
        })?;
    let names: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..key_count).map(|k| format!("k{k}")),
    ));
    let dictionary_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, false),
        Field::new("key", dictionary_type, false),
        Field::new("value", DataType::Int64, false),
    ]));
    let mut writer = FileWriter::try_new(crate::generate::create_file(path)?, &schema)?;
    let mut events = GeneratedEvents::new(spec);
    let (mut ts, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        while ts.len() < GEN_BATCH_ROWS {
            let Some((event, key)) = events.next_event_and_key_number() else {
                break;
            };
            ts.push(event.ts);
            // Below `key_count`, checked above.
            keys.push(key as i32);
            values.push(event.value);
        }
        if ts.is_empty() {
            break;
        }
        let key_column = DictionaryArray::<Int32Type>::try_new(
            PrimitiveArray::from(std::mem::take(&mut keys)),
            names.clone(),
        )?;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(std::mem::take(&mut ts))),
                Arc::new(key_column),
                Arc::new(Int64Array::from(std::mem::take(&mut values))),
            ],
        )?;
        writer.write(&batch)?;
    }
    writer.finish()?;
    Ok(())
}
