//! Membership of a Kafka consumer group without reading: the process-level member of a job
//! run as one task per partition (`tasks=per-partition`, as Kafka Streams' stream tasks).
//!
//! The member subscribes to the topic, lets the group assign it partitions, and pauses
//! every partition it gets: the tasks read their partitions with consumers of their own
//! (`partitions=P`). What it reports is the assignment, through the callback given to
//! [`GroupMember::join`], called on the thread that calls [`GroupMember::poll`].
//!
//! # Invariants
//! - A revocation is reported *before* the member gives the partitions up, and the group
//!   hands them to another member only once every member has given its partitions up
//!   (the classic, eager protocol): so when the callback returns only after the tasks of
//!   the revoked partitions have stopped, no partition ever has two running tasks, and a
//!   new owner reads a partition's checkpoints only after the old owner stopped writing
//!   them. (A member that the group expelled for missing its session timeout while still
//!   running is not stopped by this: see the README's limits.)
//! - Offsets are committed through the member ([`commit_for_group`]): a consumer that is
//!   not a member of a group with members cannot commit for it (the broker refuses).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;
use weir_engine::metrics::KafkaMetrics;

use super::reach::{wait_for_brokers, Reached, UnreachableBrokers};
use super::{topic_partitions, KafkaError, KafkaSpec, Rebalance, Reporting};

/// How long metadata requests may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A change of the partitions the group gives this process (partition numbers of the one
/// topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// These partitions are this process's now.
    Assigned(Vec<i32>),
    /// These partitions are being taken away: stop everything that reads them before
    /// returning.
    Revoked(Vec<i32>),
}

type OnChange = Box<dyn FnMut(GroupChange) + Send>;

struct MemberContext {
    reporting: Reporting,
    on_change: Mutex<OnChange>,
}

impl MemberContext {
    fn tell(&self, change: GroupChange) {
        let mut on_change = self.on_change.lock().unwrap_or_else(|p| p.into_inner());
        (on_change)(change);
    }
}

report_through_reporting!(MemberContext);

impl ConsumerContext for MemberContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let endpoint = &self.reporting.endpoint;
        let numbers = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements().iter().map(|e| e.partition()).collect()
        };
        self.reporting
            .rebalance(consumer, err, tpl, |rebalance| match rebalance {
                Rebalance::Assign(tpl) => {
                    let partitions = numbers(tpl);
                    eprintln!(
                        "weir: kafka {endpoint}: the group assigned partitions {partitions:?}"
                    );
                    // The member only holds the partitions; their tasks read them.
                    let held = consumer.assign(tpl).and_then(|()| consumer.pause(tpl));
                    self.tell(GroupChange::Assigned(partitions));
                    held
                }
                Rebalance::Revoke(tpl) => {
                    let partitions = numbers(tpl);
                    eprintln!(
                        "weir: kafka {endpoint}: the group revoked partitions {partitions:?}"
                    );
                    // Stopped before the partitions are given up (see the module's invariants).
                    self.tell(GroupChange::Revoked(partitions));
                    consumer.unassign()
                }
            });
    }
}

/// This process's membership of a consumer group, for one topic.
pub struct GroupMember {
    spec: KafkaSpec,
    consumer: BaseConsumer<MemberContext>,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("group", &self.spec.group)
            .field("topic", &self.spec.topics[0])
            .finish_non_exhaustive()
    }
}

/// Members alive in this process, for [`commit_for_group`].
static MEMBERS: Mutex<Vec<Weak<GroupMember>>> = Mutex::new(Vec::new());

impl GroupMember {
    /// Joins `spec.group` for `spec`'s (one) topic; `on_change` hears every assignment and
    /// revocation, on the thread calling [`GroupMember::poll`]. Rebalances and broker
    /// errors are counted in `metrics`.
    pub fn join(
        spec: &KafkaSpec,
        metrics: KafkaMetrics,
        on_change: impl FnMut(GroupChange) + Send + 'static,
    ) -> Result<Arc<GroupMember>, KafkaError> {
        let error = |action, source| KafkaError {
            endpoint: spec.describe(),
            action,
            source,
        };
        let mut config = spec.client_config();
        config
            .set("group.id", &spec.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let context = MemberContext {
            reporting: Reporting::new(spec, metrics),
            on_change: Mutex::new(Box::new(on_change)),
        };
        let consumer: BaseConsumer<MemberContext> = config
            .create_with_context(context)
            .map_err(|e| error("create the group member", e))?;
        consumer
            .subscribe(&[spec.topics[0].as_str()])
            .map_err(|e| error("subscribe", e))?;
        let member = Arc::new(GroupMember {
            spec: spec.clone(),
            consumer,
        });
        let mut members = MEMBERS.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&member));
        Ok(member)
    }

    /// Serves the group for up to `wait`: heartbeats go on in librdkafka's threads, but
    /// assignments and revocations are delivered here.
    pub fn poll(&self, wait: Duration) {
        match self.consumer.poll(wait) {
            // Every partition is paused, so no record arrives.
            None | Some(Ok(_)) => {}
            Some(Err(e)) => self
                .consumer
                .context()
                .reporting
                .error(&e, "group membership"),
        }
    }

    /// Waits for a first answer from the brokers, `connect_timeout` at most, as a source
    /// with `until=end` does (see `reach`): a bounded run per partition whose brokers
    /// cannot be reached fails then, naming them. True if a broker answered, false if
    /// `stopped` said so first.
    pub fn reach_brokers(&self, stopped: impl Fn() -> bool) -> Result<bool, UnreachableBrokers> {
        let reporting = &self.consumer.context().reporting;
        let drain = || {
            // Errors queued meanwhile say why; no record comes (nothing is assigned yet).
            for _ in 0..100 {
                match self.consumer.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => reporting.error(&e, "group membership"),
                }
            }
        };
        let waiter = "with until=end the group member";
        let reached = wait_for_brokers(
            self.consumer.client(),
            reporting,
            &self.spec,
            waiter,
            drain,
            stopped,
        )?;
        Ok(reached == Reached::Yes)
    }

    /// How many partitions the topic has.
    pub fn partition_count(&self) -> Result<usize, KafkaError> {
        topic_partitions(&self.consumer, &self.spec.topics[0], METADATA_TIMEOUT)
            .map(|partitions| partitions.len())
            .map_err(|e| KafkaError {
                endpoint: self.spec.describe(),
                action: "read the topic's metadata",
                source: e,
            })
    }

    /// Leaves the group: the revocation of this member's partitions is reported (through
    /// the callback) before this returns.
    pub fn leave(&self) {
        self.consumer.unsubscribe();
        // The revocation is delivered by a poll; a few are plenty.
        for _ in 0..20 {
            if self.consumer.assignment().map_or(true, |a| a.count() == 0) {
                break;
            }
            self.poll(Duration::from_millis(100));
        }
    }
}

/// Commits `offsets` for `spec`'s group through a member of that group alive in this
/// process; false if there is none.
pub(super) fn commit_for_group(spec: &KafkaSpec, offsets: &TopicPartitionList) -> bool {
    let member = MEMBERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .find(|m| m.spec.brokers == spec.brokers && m.spec.group == spec.group);
    let Some(member) = member else {
        return false;
    };
    if let Err(e) = member.consumer.commit(offsets, CommitMode::Async) {
        member
            .consumer
            .context()
            .reporting
            .commit_failed(&e.to_string());
    }
    true
}
