//! The window join and co-group: both sides of a key in one window, joined when it fires.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::keys::StableHash;
use weir_engine::{Data, StateKey, StateValue, Stream};

use super::{side_key, tagged, Side, WindowPair};
use crate::aggregate::{AggregateError, Aggregator};
use crate::window::{Window, WindowExt, WindowSpec};

/// The contents of one key's window on both sides, when the window fired (a window join's
/// co-group): what a user function over both sides receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoGrouped<K, A, B> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The left elements in the window; their order is not specified (aligned windows:
    /// pane by pane, each in arrival order; sessions: in the order sessions merged).
    pub left: Vec<A>,
    /// The right elements in the window.
    pub right: Vec<B>,
}

impl<K, A: Clone, B: Clone> CoGrouped<K, A, B> {
    /// Every left element paired with every right element (none if a side is empty).
    pub fn pairs(self) -> Vec<WindowPair<A, B>> {
        let window = self.window;
        let mut pairs = Vec::with_capacity(self.left.len() * self.right.len());
        for a in &self.left {
            for b in &self.right {
                pairs.push(WindowPair {
                    window,
                    left: a.clone(),
                    right: b.clone(),
                });
            }
        }
        pairs
    }
}

/// The "aggregate" of a window join: collects each side's elements. Panes and merged
/// sessions concatenate, so the window operator's assigners, merging, firing, lateness and
/// state handling apply to joins unchanged.
pub(super) struct BothSides<A, B>(pub(super) PhantomData<fn() -> (A, B)>);

impl<A, B> Clone for BothSides<A, B> {
    fn clone(&self) -> Self {
        BothSides(PhantomData)
    }
}

impl<A: StateValue + Data, B: StateValue + Data> Aggregator<Side<A, B>> for BothSides<A, B> {
    type Acc = (Vec<A>, Vec<B>);
    type Output = (Vec<A>, Vec<B>);

    fn create(&self) -> Self::Acc {
        (Vec::new(), Vec::new())
    }

    fn add(&self, acc: &mut Self::Acc, event: &Side<A, B>) -> Result<(), AggregateError> {
        match event {
            Side::Left(a) => acc.0.push(a.clone()),
            Side::Right(b) => acc.1.push(b.clone()),
        }
        Ok(())
    }

    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) -> Result<(), AggregateError> {
        acc.0.extend_from_slice(&other.0);
        acc.1.extend_from_slice(&other.1);
        Ok(())
    }

    fn finish(&self, acc: &Self::Acc) -> Self::Output {
        acc.clone()
    }

    fn finish_owned(&self, acc: Self::Acc) -> Self::Output {
        acc
    }
}

pub(super) fn cogroup<A, B, K, LK, RK>(
    left: Stream<A>,
    right: Stream<B>,
    left_key: LK,
    right_key: RK,
    window: WindowSpec,
) -> Stream<CoGrouped<K, A, B>>
where
    A: StateValue + Data,
    B: StateValue + Data,
    K: StateKey + StableHash + Data,
    LK: Fn(&A) -> K + Clone + Send + 'static,
    RK: Fn(&B) -> K + Clone + Send + 'static,
{
    tagged(left, right)
        .key_by(side_key(left_key, right_key))
        .window(window)
        .aggregate(BothSides(PhantomData))
        .map(|r| CoGrouped {
            key: r.key,
            window: r.window,
            left: r.value.0,
            right: r.value.1,
        })
        .internal()
}
