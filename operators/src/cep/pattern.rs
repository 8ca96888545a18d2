//! The pattern builder: named stages with a condition, a quantifier and a contiguity.

use std::sync::Arc;
use std::time::Duration;

use weir_engine::time::duration_ms;

pub(super) type Condition<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// How a stage follows the one before it (or a loop's events follow each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Contiguity {
    /// The very next event of the key must fit (`next`, `consecutive`).
    Strict,
    /// Events that do not fit are skipped (`followed_by`, loops by default).
    Relaxed,
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

/// A sequence of named stages, each with a condition and a quantifier.
pub struct Pattern<T> {
    pub(super) stages: Vec<Stage<T>>,
    pub(super) within: Option<i64>,
}

impl<T> Clone for Pattern<T> {
    fn clone(&self) -> Self {
        Pattern {
            stages: self.stages.clone(),
            within: self.within,
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
        }
    }

    fn last(&mut self) -> &mut Stage<T> {
        let at = self.stages.len() - 1;
        &mut self.stages[at]
    }

    /// The condition of the last stage added.
    pub fn where_(mut self, condition: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.last().condition = Arc::new(condition);
        self
    }

    /// A stage that must take the very next event of the key (strict contiguity).
    pub fn next(self, name: &str) -> Self {
        self.then(name, Contiguity::Strict)
    }

    /// A stage that may come after other events of the key (relaxed contiguity).
    pub fn followed_by(self, name: &str) -> Self {
        self.then(name, Contiguity::Relaxed)
    }

    /// The last stage may be left out.
    pub fn optional(mut self) -> Self {
        self.last().optional = true;
        self
    }

    /// The last stage takes exactly `n` events (`n >= 1`; 0 is taken as 1).
    pub fn times(mut self, n: u32) -> Self {
        let stage = self.last();
        stage.min = n.max(1);
        stage.max = Some(n.max(1));
        self
    }

    /// The last stage takes one or more events (a loop).
    pub fn one_or_more(mut self) -> Self {
        let stage = self.last();
        stage.min = 1;
        stage.max = None;
        self
    }

    /// The events of the last stage's loop must follow each other directly (strict).
    pub fn consecutive(mut self) -> Self {
        self.last().inner = Contiguity::Strict;
        self
    }

    /// Ends the last stage's loop at the first event satisfying `stop` (not taken).
    pub fn until(mut self, stop: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.last().until = Some(Arc::new(stop));
        self
    }

    /// A whole match must end less than `within` after its first event.
    pub fn within(mut self, within: Duration) -> Self {
        self.within = Some(duration_ms(within).max(1));
        self
    }

    fn then(mut self, name: &str, contiguity: Contiguity) -> Self {
        self.stages.push(Stage::new(name, contiguity));
        self
    }

    /// `placed -> retry+? => paid within 30000 ms` (`->` relaxed, `=>` strict).
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                text.push_str(match stage.contiguity {
                    Contiguity::Strict => " => ",
                    Contiguity::Relaxed => " -> ",
                });
            }
            text.push_str(&stage.describe());
        }
        if let Some(within) = self.within {
            text.push_str(&format!(" within {within} ms"));
        }
        text
    }
}
