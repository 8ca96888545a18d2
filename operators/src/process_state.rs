//! Map and list state for process functions (Flink's `MapState` and `ListState`), declared
//! by name with a typed descriptor and reached through the [`TimerContext`].
//!
//! A [`TimerFunction`] lists the state it uses in [`TimerFunction::declare_state`]; each
//! descriptor becomes a state table of the operator under the descriptor's name (shown by
//! `weir describe` and the HTTP API, flushed at checkpoints, restored at any parallelism).
//! During a call, `ctx.map_state(&DESCRIPTOR)` or `ctx.list_state(&DESCRIPTOR)` gives the
//! current key's map or list.
//!
//! - **Map state** keeps each entry on its own ([`weir_engine::state::keyed`]): in RocksDB
//!   a put writes one entry whatever the map's size, and iterating is a prefix scan.
//! - **List state** keeps a key's list as one value (a `Vec`), cached in front of RocksDB
//!   like any value: an `add` to a cached key is a push, and the list is written back
//!   whole. It suits the short lists of a key (recent events); a big collection belongs in
//!   map state.
//!
//! # Errors
//! A state access returns a `Result`, and its error also fails the job once the call
//! returns (the results of that call are dropped), whatever the function did with it: the
//! function cannot go on from a failed write as if it had happened.
//!
//! # Why type erasure
//! The context is not generic over the state backend, so the operator keeps each declared
//! table behind a trait object typed by the descriptor's types only
//! (`Box<dyn MapAccess<UK, UV>>`), found by name and downcast when the function asks for it
//! with the same descriptor. The table holds the current key itself (set by the operator
//! before each call, as Flink's backend holds its current key).
//!
//! [`TimerContext`]: crate::TimerContext
//! [`TimerFunction`]: crate::TimerFunction
//! [`TimerFunction::declare_state`]: crate::TimerFunction::declare_state

use std::any::Any;
use std::marker::PhantomData;

use weir_engine::state::StateError;
use weir_engine::state::{KeyedMapState, MapEntries, UserKey};
use weir_engine::{MapState, StateBackend, StateKey, StateTable, StateValue};

/// Names a map state of a process function, with its user key and value types (Flink's
/// `MapStateDescriptor`). Usually a `const`.
#[derive(Debug)]
pub struct MapStateDescriptor<UK, UV> {
    name: &'static str,
    _types: PhantomData<fn() -> (UK, UV)>,
}

impl<UK, UV> MapStateDescriptor<UK, UV> {
    /// A map state named `name` (its state table's name within the operator).
    pub const fn new(name: &'static str) -> Self {
        MapStateDescriptor {
            name,
            _types: PhantomData,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Names a list state of a process function, with its element type (Flink's
/// `ListStateDescriptor`). Usually a `const`.
#[derive(Debug)]
pub struct ListStateDescriptor<V> {
    name: &'static str,
    _types: PhantomData<fn() -> V>,
}

impl<V> ListStateDescriptor<V> {
    /// A list state named `name` (its state table's name within the operator).
    pub const fn new(name: &'static str) -> Self {
        ListStateDescriptor {
            name,
            _types: PhantomData,
        }
    }

    /// The state's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// What [`crate::TimerFunction::declare_state`] declares its state to.
pub trait DeclareState<K> {
    /// The function uses the map state `descriptor`.
    fn map<UK: UserKey, UV: StateValue>(&mut self, descriptor: &MapStateDescriptor<UK, UV>);

    /// The function uses the list state `descriptor`.
    fn list<V: StateValue>(&mut self, descriptor: &ListStateDescriptor<V>);
}

/// Collects the declared names (for the factory's table list, before any backend exists).
#[derive(Debug, Default)]
pub(crate) struct StateNames(pub(crate) Vec<String>);

impl<K> DeclareState<K> for StateNames {
    fn map<UK: UserKey, UV: StateValue>(&mut self, descriptor: &MapStateDescriptor<UK, UV>) {
        self.0.push(descriptor.name.to_string());
    }

    fn list<V: StateValue>(&mut self, descriptor: &ListStateDescriptor<V>) {
        self.0.push(descriptor.name.to_string());
    }
}

/// Opens the declared tables in a backend.
pub(crate) struct OpenStates<'a, B, K> {
    backend: &'a mut B,
    tables: Vec<Declared>,
    error: Option<StateError>,
    _key: PhantomData<fn() -> K>,
}

impl<'a, B: StateBackend, K: StateKey> OpenStates<'a, B, K> {
    pub(crate) fn new(backend: &'a mut B) -> Self {
        OpenStates {
            backend,
            tables: Vec::new(),
            error: None,
            _key: PhantomData,
        }
    }

    /// The opened tables, or the first error; `reserved` names tables the operator has
    /// already, which a declared state must not reuse.
    pub(crate) fn finish(self, reserved: &[&str]) -> Result<KeyedStates, StateError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        for (i, table) in self.tables.iter().enumerate() {
            let taken = reserved.contains(&table.name)
                || self.tables[..i].iter().any(|t| t.name == table.name);
            // A table is `<operator>/<name>` in checkpoints: a `/` in the name would make
            // its name there ambiguous.
            if taken || table.name.is_empty() || table.name.contains('/') {
                return Err(StateError {
                    table: table.name.to_string(),
                    message: "declared twice, named like a table the operator keeps itself, \
                              empty or with a `/`: give each state a name of its own"
                        .into(),
                });
            }
        }
        Ok(KeyedStates {
            tables: self.tables,
            error: None,
        })
    }

    fn push(&mut self, name: &'static str, opened: Result<Box<dyn KeyedAccess>, StateError>) {
        match opened {
            Ok(access) => self.tables.push(Declared { name, access }),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

impl<B: StateBackend, K: StateKey> DeclareState<K> for OpenStates<'_, B, K> {
    fn map<UK: UserKey, UV: StateValue>(&mut self, descriptor: &MapStateDescriptor<UK, UV>) {
        let opened = self
            .backend
            .keyed_map_state::<K, UK, UV>(descriptor.name)
            .map(|map| {
                let access: Box<dyn MapAccess<UK, UV>> = Box::new(MapAt {
                    map,
                    key: CurrentKey(None),
                    _types: PhantomData,
                });
                Box::new(access) as Box<dyn KeyedAccess>
            });
        self.push(descriptor.name, opened);
    }

    fn list<V: StateValue>(&mut self, descriptor: &ListStateDescriptor<V>) {
        let opened = self
            .backend
            .map_state::<K, Vec<V>>(descriptor.name)
            .map(|list| {
                let access: Box<dyn ListAccess<V>> = Box::new(ListAt {
                    list,
                    key: CurrentKey(None),
                    _types: PhantomData,
                });
                Box::new(access) as Box<dyn KeyedAccess>
            });
        self.push(descriptor.name, opened);
    }
}

struct Declared {
    name: &'static str,
    access: Box<dyn KeyedAccess>,
}

/// The declared state of a process function, at the current key.
#[derive(Default)]
pub(crate) struct KeyedStates {
    tables: Vec<Declared>,
    /// The first failed access of the current call.
    error: Option<StateError>,
}

impl std::fmt::Debug for KeyedStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tables.iter().map(|t| t.name).collect();
        f.debug_struct("KeyedStates")
            .field("tables", &names)
            .finish()
    }
}

impl KeyedStates {
    /// Makes `key` the current key of every table (before a call of the function).
    #[inline]
    pub(crate) fn set_key<K: 'static>(&mut self, key: &K) {
        for table in &mut self.tables {
            table.access.set_key(key);
        }
    }

    /// Removes the current key's entries from every table.
    pub(crate) fn clear_key(&mut self) -> Result<(), StateError> {
        for table in &mut self.tables {
            table.access.clear_key()?;
        }
        Ok(())
    }

    /// The first access that failed since the last call of this.
    pub(crate) fn take_error(&mut self) -> Option<StateError> {
        self.error.take()
    }

    pub(crate) fn tables(&mut self) -> impl Iterator<Item = &mut dyn StateTable> {
        self.tables.iter_mut().map(|t| t.access.table())
    }

    pub(crate) fn entries(&self) -> usize {
        self.tables.iter().map(|t| t.access.len()).sum()
    }

    /// After a restore: tables recount what was restored into them.
    pub(crate) fn restored(&mut self) -> Result<(), StateError> {
        for table in &mut self.tables {
            table.access.restored()?;
        }
        Ok(())
    }

    /// The map state `descriptor` at the current key.
    pub(crate) fn map<UK: UserKey, UV: StateValue>(
        &mut self,
        descriptor: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapStateHandle<'_, UK, UV>, StateError> {
        let KeyedStates { tables, error } = self;
        match find::<Box<dyn MapAccess<UK, UV>>>(tables, descriptor.name) {
            Some(map) => Ok(MapStateHandle {
                map: map.as_mut(),
                error,
            }),
            None => Err(record(error, undeclared(descriptor.name, "map"))),
        }
    }

    /// The list state `descriptor` at the current key.
    pub(crate) fn list<V: StateValue>(
        &mut self,
        descriptor: &ListStateDescriptor<V>,
    ) -> Result<ListStateHandle<'_, V>, StateError> {
        let KeyedStates { tables, error } = self;
        match find::<Box<dyn ListAccess<V>>>(tables, descriptor.name) {
            Some(list) => Ok(ListStateHandle {
                list: list.as_mut(),
                error,
            }),
            None => Err(record(error, undeclared(descriptor.name, "list"))),
        }
    }
}

/// The table `name`, if it is a `T`.
fn find<'a, T: 'static>(tables: &'a mut [Declared], name: &str) -> Option<&'a mut T> {
    tables
        .iter_mut()
        .find(|t| t.name == name)
        // Through the box: `Box<dyn KeyedAccess>` is a `KeyedAccess` itself (the blanket
        // impl), whose `as_any` would be the outer box.
        .and_then(|t| t.access.as_mut().as_any().downcast_mut::<T>())
}

fn undeclared(name: &str, kind: &str) -> StateError {
    StateError {
        table: name.to_string(),
        message: format!(
            "not declared as a {kind} state of these types in the function's declare_state"
        ),
    }
}

/// Keeps the first error of a call, so that it fails the job when the call returns.
fn record(slot: &mut Option<StateError>, error: StateError) -> StateError {
    slot.get_or_insert_with(|| error.clone());
    error
}

/// Records the error of `result`, if any, and returns it.
fn noted<R>(slot: &mut Option<StateError>, result: Result<R, StateError>) -> Result<R, StateError> {
    result.map_err(|e| record(slot, e))
}

/// The current key's map of a map state (Flink's `MapState`). Errors are returned and also
/// fail the job when the call returns (see the module docs).
pub struct MapStateHandle<'a, UK, UV> {
    map: &'a mut dyn MapAccess<UK, UV>,
    error: &'a mut Option<StateError>,
}

impl<UK, UV> std::fmt::Debug for MapStateHandle<'_, UK, UV> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStateHandle").finish_non_exhaustive()
    }
}

impl<UK, UV> MapStateHandle<'_, UK, UV> {
    /// The value under `user_key`.
    pub fn get(&mut self, user_key: &UK) -> Result<Option<UV>, StateError> {
        noted(self.error, self.map.get(user_key))
    }

    /// Whether there is a value under `user_key`.
    pub fn contains(&mut self, user_key: &UK) -> Result<bool, StateError> {
        noted(self.error, self.map.contains(user_key))
    }

    /// Stores `value` under `user_key` (one entry written, whatever the map's size).
    pub fn put(&mut self, user_key: UK, value: UV) -> Result<(), StateError> {
        noted(self.error, self.map.put(user_key, value))
    }

    /// Removes and returns the value under `user_key`.
    pub fn remove(&mut self, user_key: &UK) -> Result<Option<UV>, StateError> {
        noted(self.error, self.map.remove(user_key))
    }

    /// Every entry, in no particular order, read as the iterator goes (a prefix scan in
    /// RocksDB).
    pub fn entries(
        &mut self,
    ) -> Result<impl Iterator<Item = Result<(UK, UV), StateError>> + '_, StateError> {
        let error = &mut *self.error;
        match self.map.entries() {
            Ok(entries) => Ok(entries.map(move |entry| noted(error, entry))),
            Err(e) => Err(record(error, e)),
        }
    }

    /// Every user key, in no particular order.
    pub fn keys(
        &mut self,
    ) -> Result<impl Iterator<Item = Result<UK, StateError>> + '_, StateError> {
        Ok(self.entries()?.map(|entry| entry.map(|(key, _)| key)))
    }

    /// Whether the map has no entry.
    pub fn is_empty(&mut self) -> Result<bool, StateError> {
        Ok(self.entries()?.next().transpose()?.is_none())
    }

    /// Removes every entry of the map.
    pub fn clear(&mut self) -> Result<(), StateError> {
        noted(self.error, self.map.clear_key())
    }
}

/// The current key's list of a list state (Flink's `ListState`). Errors are returned and
/// also fail the job when the call returns (see the module docs).
pub struct ListStateHandle<'a, V> {
    list: &'a mut dyn ListAccess<V>,
    error: &'a mut Option<StateError>,
}

impl<V> std::fmt::Debug for ListStateHandle<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListStateHandle").finish_non_exhaustive()
    }
}

impl<V> ListStateHandle<'_, V> {
    /// Appends `value`.
    pub fn add(&mut self, value: V) -> Result<(), StateError> {
        noted(self.error, self.list.add(value))
    }

    /// Appends every value of `values`, in order.
    pub fn add_all(&mut self, values: impl IntoIterator<Item = V>) -> Result<(), StateError> {
        for value in values {
            self.add(value)?;
        }
        Ok(())
    }

    /// The whole list, in the order it was added (empty if none).
    pub fn get(&mut self) -> Result<Vec<V>, StateError> {
        noted(self.error, self.list.get())
    }

    /// The list's values, in order.
    pub fn iter(&mut self) -> Result<std::vec::IntoIter<V>, StateError> {
        Ok(self.get()?.into_iter())
    }

    /// Replaces the list with `values` (an empty one removes it).
    pub fn update(&mut self, values: Vec<V>) -> Result<(), StateError> {
        noted(self.error, self.list.update(values))
    }

    /// Removes the list.
    pub fn clear(&mut self) -> Result<(), StateError> {
        noted(self.error, self.list.clear_key())
    }
}

/// What the operator needs of every declared table, whatever its types.
trait Common: Send {
    fn set_key(&mut self, key: &dyn Any);
    /// Removes the current key's entries.
    fn clear_key(&mut self) -> Result<(), StateError>;
    fn table(&mut self) -> &mut dyn StateTable;
    fn len(&self) -> usize;
    /// Recounts after a restore.
    fn restored(&mut self) -> Result<(), StateError>;
}

/// A declared table as the operator keeps it: a `Box<dyn MapAccess<..>>` or
/// `Box<dyn ListAccess<..>>`, which a descriptor's types downcast to.
trait KeyedAccess: Common {
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<T: ?Sized + Common> Common for Box<T> {
    fn set_key(&mut self, key: &dyn Any) {
        (**self).set_key(key)
    }
    fn clear_key(&mut self) -> Result<(), StateError> {
        (**self).clear_key()
    }
    fn table(&mut self) -> &mut dyn StateTable {
        (**self).table()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn restored(&mut self) -> Result<(), StateError> {
        (**self).restored()
    }
}

impl<T: ?Sized + Common + 'static> KeyedAccess for Box<T> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// A map state at the current key, its types known.
trait MapAccess<UK, UV>: Common {
    fn get(&mut self, user_key: &UK) -> Result<Option<UV>, StateError>;
    fn contains(&mut self, user_key: &UK) -> Result<bool, StateError>;
    fn put(&mut self, user_key: UK, value: UV) -> Result<(), StateError>;
    fn remove(&mut self, user_key: &UK) -> Result<Option<UV>, StateError>;
    fn entries(&mut self) -> Result<MapEntries<'_, UK, UV>, StateError>;
}

/// A list state at the current key, its type known.
trait ListAccess<V>: Common {
    fn get(&mut self) -> Result<Vec<V>, StateError>;
    fn add(&mut self, value: V) -> Result<(), StateError>;
    fn update(&mut self, values: Vec<V>) -> Result<(), StateError>;
}

/// The current key of a table (set before each call of the function).
struct CurrentKey<K>(Option<K>);

impl<K: StateKey> CurrentKey<K> {
    fn set(&mut self, key: &dyn Any) {
        if let Some(key) = key.downcast_ref::<K>() {
            // clone_from reuses the previous key's allocation.
            match &mut self.0 {
                Some(current) => current.clone_from(key),
                None => self.0 = Some(key.clone()),
            }
        }
    }

    fn get(&self, table: &dyn StateTable) -> Result<&K, StateError> {
        self.0.as_ref().ok_or_else(|| StateError {
            table: table.name().to_string(),
            message: "used outside a call of the function (no current key)".into(),
        })
    }
}

/// A map-state table and its current key.
struct MapAt<K, UK, UV, M> {
    map: M,
    key: CurrentKey<K>,
    _types: PhantomData<fn() -> (UK, UV)>,
}

/// A list-state table (a `Vec` per key) and its current key.
struct ListAt<K, V, M> {
    list: M,
    key: CurrentKey<K>,
    _types: PhantomData<fn() -> V>,
}

/// The parts of `Common` both kinds share.
macro_rules! common_of {
    ($table:ident) => {
        fn set_key(&mut self, key: &dyn Any) {
            self.key.set(key)
        }
        fn table(&mut self) -> &mut dyn StateTable {
            &mut self.$table
        }
        fn len(&self) -> usize {
            self.$table.len()
        }
    };
}

impl<K: StateKey, UK: UserKey, UV: StateValue, M: KeyedMapState<K, UK, UV>> Common
    for MapAt<K, UK, UV, M>
{
    common_of!(map);
    fn clear_key(&mut self) -> Result<(), StateError> {
        let key = self.key.get(&self.map)?;
        self.map.clear(key).map(drop)
    }
    fn restored(&mut self) -> Result<(), StateError> {
        self.map.recount()
    }
}

impl<K: StateKey, UK: UserKey, UV: StateValue, M: KeyedMapState<K, UK, UV>> MapAccess<UK, UV>
    for MapAt<K, UK, UV, M>
{
    fn get(&mut self, user_key: &UK) -> Result<Option<UV>, StateError> {
        self.map.get(self.key.get(&self.map)?, user_key)
    }
    fn contains(&mut self, user_key: &UK) -> Result<bool, StateError> {
        self.map.contains(self.key.get(&self.map)?, user_key)
    }
    fn put(&mut self, user_key: UK, value: UV) -> Result<(), StateError> {
        let key = self.key.get(&self.map)?;
        self.map.put(key, user_key, value)
    }
    fn remove(&mut self, user_key: &UK) -> Result<Option<UV>, StateError> {
        let key = self.key.get(&self.map)?;
        self.map.remove(key, user_key)
    }
    fn entries(&mut self) -> Result<MapEntries<'_, UK, UV>, StateError> {
        let key = self.key.get(&self.map)?;
        self.map.entries(key)
    }
}

impl<K: StateKey, V: StateValue, M: MapState<K, Vec<V>>> Common for ListAt<K, V, M> {
    common_of!(list);
    fn clear_key(&mut self) -> Result<(), StateError> {
        let key = self.key.get(&self.list)?;
        self.list.take(key).map(drop)
    }
    fn restored(&mut self) -> Result<(), StateError> {
        // A scan recounts a table that a restore filled.
        self.list.scan(|_, _| {})
    }
}

impl<K: StateKey, V: StateValue, M: MapState<K, Vec<V>>> ListAccess<V> for ListAt<K, V, M> {
    fn get(&mut self) -> Result<Vec<V>, StateError> {
        let key = self.key.get(&self.list)?;
        Ok(self.list.get(key)?.unwrap_or_default())
    }
    fn add(&mut self, value: V) -> Result<(), StateError> {
        let key = self.key.get(&self.list)?;
        self.list.update(key, Vec::new, |list| list.push(value))
    }
    fn update(&mut self, values: Vec<V>) -> Result<(), StateError> {
        let key = self.key.get(&self.list)?;
        if values.is_empty() {
            self.list.take(key).map(drop)
        } else {
            self.list.put(key.clone(), values)
        }
    }
}
