//! The pattern builder: named stages with a condition, a quantifier and a contiguity,
//! negative stages between them, the after-match skip strategy, and the mistakes it refuses.

use std::sync::Arc;
use std::time::Duration;

use weir_engine::time::duration_ms;

use super::state::MAX_STAGES;

pub(super) type Condition<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// How a stage follows the one before it (or a loop's events follow each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Contiguity {
    /// The very next event of the key must fit (`next`, `consecutive`).
    Strict,
    /// Events that do not fit are skipped (`followed_by`, loops by default).
    Relaxed,
    /// Any event may be skipped, one that fits too (`followed_by_any`).
    Any,
}

/// Which matches the pattern emits when several share events: FlinkCEP's after-match skip
/// strategies (see the module docs for what each discards, and when).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AfterMatchSkip {
    /// Every match (the default).
    #[default]
    NoSkip,
    /// A match discards the partial matches that started with its first event.
    SkipToNext,
    /// A match discards the partial matches that started at or before its last event: an
    /// event is in one match at most.
    SkipPastLastEvent,
    /// A match discards the partial matches that started before its first event of the
    /// named stage (none if it has no such event).
    SkipToFirst(String),
    /// A match discards the partial matches that started before its last event of the
    /// named stage (none if it has no such event).
    SkipToLast(String),
}

/// What a negative stage forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Negation {
    /// The next event after the previous stage's last one (`not_next`).
    Next,
    /// Any event before the next stage's first one, or before the deadline at the end of
    /// the pattern (`not_followed_by`).
    FollowedBy,
}

/// A negative stage: an event satisfying its condition ends the partial match.
pub(super) struct Negative<T> {
    pub(super) name: String,
    pub(super) condition: Condition<T>,
    pub(super) negation: Negation,
}

impl<T> Clone for Negative<T> {
    fn clone(&self) -> Self {
        Negative {
            name: self.name.clone(),
            condition: self.condition.clone(),
            negation: self.negation,
        }
    }
}

pub(super) struct Stage<T> {
    pub(super) name: String,
    pub(super) condition: Condition<T>,
    /// Relative to the previous stage's last event.
    pub(super) contiguity: Contiguity,
    /// Between the events of a looping stage.
    pub(super) inner: Contiguity,
    /// Events it needs (unless optional) and may take (`None`: unbounded).
    pub(super) min: u32,
    pub(super) max: Option<u32>,
    pub(super) optional: bool,
    /// Stops a loop once it has taken an event.
    pub(super) until: Option<Condition<T>>,
    /// The negative stages between this stage and the next one (or the end).
    pub(super) after: Vec<Negative<T>>,
}

impl<T> Clone for Stage<T> {
    fn clone(&self) -> Self {
        Stage {
            name: self.name.clone(),
            condition: self.condition.clone(),
            contiguity: self.contiguity,
            inner: self.inner,
            min: self.min,
            max: self.max,
            optional: self.optional,
            until: self.until.clone(),
            after: self.after.clone(),
        }
    }
}

impl<T> Stage<T> {
    fn new(name: &str, contiguity: Contiguity) -> Self {
        Stage {
            name: name.to_string(),
            condition: Arc::new(|_| true),
            contiguity,
            inner: Contiguity::Relaxed,
            min: 1,
            max: Some(1),
            optional: false,
            until: None,
            after: Vec::new(),
        }
    }

    /// With `count` events taken, the pattern may go on to the next stage.
    pub(super) fn satisfied(&self, count: u32) -> bool {
        count >= self.min || (self.optional && count == 0)
    }

    /// With `count` events taken, the stage may take another.
    pub(super) fn open(&self, count: u32) -> bool {
        self.max.is_none_or(|max| count < max)
    }

    /// Whether an event that the stage does not take may be skipped.
    pub(super) fn skips(&self, count: u32) -> Contiguity {
        if count == 0 {
            self.contiguity
        } else {
            self.inner
        }
    }

    /// `name`, `name?`, `name{3}`, `name+`.
    fn describe(&self) -> String {
        let quantifier = match (self.min, self.max) {
            (1, Some(1)) => String::new(),
            (_, None) => "+".into(),
            (_, Some(n)) => format!("{{{n}}}"),
        };
        let optional = if self.optional { "?" } else { "" };
        format!("{}{quantifier}{optional}", self.name)
    }
}

/// A sequence of named stages, each with a condition and a quantifier, with negative
/// stages between them; the after-match skip strategy.
pub struct Pattern<T> {
    pub(super) stages: Vec<Stage<T>>,
    pub(super) within: Option<i64>,
    pub(super) skip: AfterMatchSkip,
    /// Some stage has negative stages after it.
    pub(super) negated: bool,
    /// The last element added is a negative stage (`where_` goes to it).
    negative_last: bool,
    /// Builder mistakes, refused when the job is built.
    errors: Vec<String>,
}

impl<T> Clone for Pattern<T> {
    fn clone(&self) -> Self {
        Pattern {
            stages: self.stages.clone(),
            within: self.within,
            skip: self.skip.clone(),
            negated: self.negated,
            negative_last: self.negative_last,
            errors: self.errors.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Pattern<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl<T> Pattern<T> {
    /// A pattern whose first stage is `name` (any event, until [`Pattern::where_`]).
    pub fn begin(name: &str) -> Self {
        Pattern {
            stages: vec![Stage::new(name, Contiguity::Relaxed)],
            within: None,
            skip: AfterMatchSkip::NoSkip,
            negated: false,
            negative_last: false,
            errors: Vec::new(),
        }
    }

    fn last(&mut self) -> &mut Stage<T> {
        let at = self.stages.len() - 1;
        &mut self.stages[at]
    }

    /// The last stage, for a quantifier: `None` (and a mistake noted) if the last element
    /// added is a negative stage, which takes none.
    fn quantified(&mut self, what: &str) -> Option<&mut Stage<T>> {
        if self.negative_last {
            let name = self.last().after.last().map(|n| n.name.clone());
            self.errors.push(format!(
                "`{what}` on the negative stage `{}`: a negative stage takes no quantifier",
                name.unwrap_or_default()
            ));
            return None;
        }
        Some(self.last())
    }

    /// The condition of the last stage added (positive or negative).
    pub fn where_(mut self, condition: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        let condition: Condition<T> = Arc::new(condition);
        let negative_last = self.negative_last;
        let last = self.last();
        match last.after.last_mut() {
            Some(negative) if negative_last => negative.condition = condition,
            _ => last.condition = condition,
        }
        self
    }

    /// A stage that must take the very next event of the key (strict contiguity).
    pub fn next(self, name: &str) -> Self {
        self.then(name, Contiguity::Strict)
    }

    /// A stage that may come after other events of the key (relaxed contiguity: the first
    /// event that fits is taken).
    pub fn followed_by(self, name: &str) -> Self {
        self.then(name, Contiguity::Relaxed)
    }

    /// A stage that may come after other events of the key, any of the events that fit
    /// (non-deterministic relaxed contiguity: an event that fits is taken, and also skipped
    /// by another partial match, so there are more matches).
    pub fn followed_by_any(self, name: &str) -> Self {
        self.then(name, Contiguity::Any)
    }

    /// A negative stage: the partial match ends if the event right after the previous
    /// stage's last event satisfies its condition ([`Pattern::where_`]).
    pub fn not_next(self, name: &str) -> Self {
        self.negative(name, Negation::Next)
    }

    /// A negative stage: the partial match ends if an event satisfying its condition
    /// ([`Pattern::where_`]) comes between the previous stage's last event and the next
    /// stage's first one. At the end of the pattern it needs [`Pattern::within`]: the
    /// match is emitted at its deadline if no such event came.
    pub fn not_followed_by(self, name: &str) -> Self {
        self.negative(name, Negation::FollowedBy)
    }

    /// The last stage may be left out.
    pub fn optional(mut self) -> Self {
        if let Some(stage) = self.quantified("optional") {
            stage.optional = true;
        }
        self
    }

    /// The last stage takes exactly `n` events (`n >= 1`; 0 is taken as 1).
    pub fn times(mut self, n: u32) -> Self {
        if let Some(stage) = self.quantified("times") {
            stage.min = n.max(1);
            stage.max = Some(n.max(1));
        }
        self
    }

    /// The last stage takes one or more events (a loop).
    pub fn one_or_more(mut self) -> Self {
        if let Some(stage) = self.quantified("one_or_more") {
            stage.min = 1;
            stage.max = None;
        }
        self
    }

    /// The events of the last stage's loop must follow each other directly (strict).
    pub fn consecutive(mut self) -> Self {
        if let Some(stage) = self.quantified("consecutive") {
            stage.inner = Contiguity::Strict;
        }
        self
    }

    /// Ends the last stage's loop at the first event satisfying `stop` (not taken).
    pub fn until(mut self, stop: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        if let Some(stage) = self.quantified("until") {
            stage.until = Some(Arc::new(stop));
        }
        self
    }

    /// The after-match skip strategy (default [`AfterMatchSkip::NoSkip`]): which matches
    /// are emitted when several could share events.
    pub fn skip(mut self, strategy: AfterMatchSkip) -> Self {
        self.skip = strategy;
        self
    }

    /// A whole match must end less than `within` after its first event.
    pub fn within(mut self, within: Duration) -> Self {
        self.within = Some(duration_ms(within).max(1));
        self
    }

    fn then(mut self, name: &str, contiguity: Contiguity) -> Self {
        self.stages.push(Stage::new(name, contiguity));
        self.negative_last = false;
        self
    }

    fn negative(mut self, name: &str, negation: Negation) -> Self {
        // FlinkCEP's rule: with the optional stage left out, the negative stage would have
        // nothing to follow.
        let last = self.last();
        if last.optional && last.after.is_empty() {
            let previous = last.name.clone();
            self.errors.push(format!(
                "the negative stage `{name}` follows the optional stage `{previous}`: a \
                 negative stage cannot follow an optional one (write two patterns, with and \
                 without `{previous}`)"
            ));
        }
        self.last().after.push(Negative {
            name: name.to_string(),
            condition: Arc::new(|_| true),
            negation,
        });
        self.negated = true;
        self.negative_last = true;
        self
    }

    /// The builder mistakes of the pattern, and the combinations it does not support: the
    /// job refuses to run with any.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = self.errors.clone();
        if self.stages.len() > MAX_STAGES {
            problems.push(format!(
                "{} stages: at most {MAX_STAGES}",
                self.stages.len()
            ));
        }
        let trailing = self.stages.last().map_or(&[][..], |s| &s.after[..]);
        if self.within.is_none() {
            if let Some(n) = trailing.iter().find(|n| n.negation == Negation::FollowedBy) {
                problems.push(format!(
                    "the pattern ends with the negative stage `{}` (not_followed_by) but has no \
                     within(..): it would wait for ever; add within(..), or a stage after it",
                    n.name
                ));
            }
        }
        if let AfterMatchSkip::SkipToFirst(name) | AfterMatchSkip::SkipToLast(name) = &self.skip {
            if !self.stages.iter().any(|s| &s.name == name) {
                problems.push(format!(
                    "the skip strategy names the stage `{name}`, which is not a (positive) \
                     stage of the pattern"
                ));
            }
        }
        problems
    }

    /// `placed -> retry+? => paid within 30000 ms` (`->` relaxed, `=>` strict, `~>` any;
    /// `!` a negative stage), and the skip strategy unless it is the default.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                text.push_str(match stage.contiguity {
                    Contiguity::Strict => " => ",
                    Contiguity::Relaxed => " -> ",
                    Contiguity::Any => " ~> ",
                });
            }
            text.push_str(&stage.describe());
            for negative in &stage.after {
                text.push_str(match negative.negation {
                    Negation::Next => " => !",
                    Negation::FollowedBy => " -> !",
                });
                text.push_str(&negative.name);
            }
        }
        if let Some(within) = self.within {
            text.push_str(&format!(" within {within} ms"));
        }
        match &self.skip {
            AfterMatchSkip::NoSkip => {}
            AfterMatchSkip::SkipToNext => text.push_str(", skip to next"),
            AfterMatchSkip::SkipPastLastEvent => text.push_str(", skip past last event"),
            AfterMatchSkip::SkipToFirst(name) => text.push_str(&format!(", skip to first {name}")),
            AfterMatchSkip::SkipToLast(name) => text.push_str(&format!(", skip to last {name}")),
        }
        text
    }
}
