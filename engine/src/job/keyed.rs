//! [`KeyedStream`], a stream partitioned by key, where keyed operators apply.

use std::marker::PhantomData;
use std::rc::Rc;

use super::{NodeKind, Stream};
use crate::keys::StableHash;
use crate::operator::OperatorFactory;
use crate::record::Data;
use crate::runtime::KeyedNode;
use crate::state::StateKey;

/// A stream partitioned by key ([`Stream::key_by`]); stateful operators apply per key.
///
/// The operators themselves are in the `weir-operators` crate, as extension traits of this
/// type that `use weir_operators::prelude::*` (or `weir_jobs::prelude::*`) brings into
/// scope, each with an example:
///
/// - [`WindowExt`](../weir_operators/window/trait.WindowExt.html): `.window(..)`, event-time
///   windows (tumbling, sliding, session) with an aggregate or another window function;
/// - [`ProcessExt`](../weir_operators/process/trait.ProcessExt.html):
///   `.process_with_state(..)`, per-key logic with a state value per key, and
///   `.process_with_timers(..)`, with event-time timers and map and list state;
/// - [`CepExt`](../weir_operators/cep/trait.CepExt.html): `.pattern(..)`, sequence patterns
///   per key (FlinkCEP's), with a timeout output;
/// - [`ContinuousTopNExt`](../weir_operators/continuous_topn/trait.ContinuousTopNExt.html)
///   (top N over running aggregates) and
///   [`KeyedDedupExt`](../weir_operators/dedup/trait.KeyedDedupExt.html) (drop repeated ids).
///
/// Joins ([`JoinExt`](../weir_operators/join/trait.JoinExt.html)) apply to two [`Stream`]s
/// and key them themselves.
///
/// An operator of your own applies with [`KeyedStream::process`].
pub struct KeyedStream<K, T, KF> {
    pub(super) stream: Stream<T>,
    pub(super) key: KF,
    pub(super) _key: PhantomData<fn() -> K>,
}

impl<K, T, KF> std::fmt::Debug for KeyedStream<K, T, KF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl<K, T, KF> KeyedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    /// The stream before keying.
    pub fn stream(&self) -> &Stream<T> {
        &self.stream
    }

    /// The key function (for operators that re-key the stream themselves).
    pub fn key_fn(&self) -> KF {
        self.key.clone()
    }

    /// Applies a keyed operator made by `factory`, one instance per worker. Its results
    /// keep the event time the operator gives them.
    pub fn process<F>(self, name: &str, detail: String, factory: F) -> Stream<F::Out>
    where
        F: OperatorFactory<Key = K, In = T>,
    {
        let job = self.stream.job.clone();
        let tables = factory.tables();
        let id = job.add(
            name,
            NodeKind::Keyed,
            detail,
            &[self.stream.node],
            Rc::new(KeyedNode::new(factory, self.key)),
        );
        let mut graph = job.inner.graph.borrow_mut();
        graph.nodes[id].tables = tables;
        graph.nodes[id].key = Some(short_type_name::<K>());
        drop(graph);
        Stream::new(job, id, self.stream.timed)
    }
}

/// `T`'s type name without module paths (`Option<String>`, not
/// `core::option::Option<alloc::string::String>`): a keyed operator's key as
/// `weir describe` shows it.
pub(super) fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    // A path (`a::b::C`) ends at the first character that cannot be in one.
    let mut path = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
            continue;
        }
        out.push_str(path.rsplit("::").next().unwrap_or_default());
        path.clear();
        out.push(c);
    }
    out.push_str(path.rsplit("::").next().unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn key_types_are_named_without_their_paths() {
        assert_eq!(short_type_name::<String>(), "String");
        assert_eq!(short_type_name::<(i64, u8)>(), "(i64, u8)");
        assert_eq!(
            short_type_name::<Option<std::sync::Arc<str>>>(),
            "Option<Arc<str>>"
        );
        assert_eq!(short_type_name::<crate::intern::SharedStr>(), "SharedStr");
    }
}
