//! Jobs by name: what `weir jobs` lists and `weir run JOB` builds.

use weir_engine::Job;

use crate::options::JobOptions;

/// Builds a job from options.
pub type BuildFn = fn(&JobOptions) -> anyhow::Result<Job>;

/// One registered job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The name used on the command line.
    pub name: String,
    /// One line on what it computes.
    pub about: String,
    /// Its builder.
    pub build: BuildFn,
    /// The queries `--query` selects, for jobs that bundle several (what `--all` runs).
    pub queries: &'static [&'static str],
}

/// The jobs a binary offers.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    jobs: Vec<JobSpec>,
}

impl Registry {
    /// No jobs yet.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The jobs bundled with weir.
    pub fn bundled() -> Self {
        Registry::new()
            .job(
                "window-agg",
                crate::window_agg::ABOUT,
                crate::window_agg::build,
            )
            .job(
                "order-analytics",
                crate::order_analytics::ABOUT,
                crate::order_analytics::build,
            )
            .job(
                "saga-monitor",
                crate::saga_monitor::ABOUT,
                crate::saga_monitor::build,
            )
            .job(
                "account-balances",
                crate::account_balances::ABOUT,
                crate::account_balances::build,
            )
            .job_with_queries(
                "nexmark",
                crate::nexmark::ABOUT,
                crate::nexmark::build,
                &crate::nexmark::QUERIES,
            )
            .job(
                "operators",
                crate::operator_bench::ABOUT,
                crate::operator_bench::build,
            )
    }

    /// Adds a job.
    pub fn job(self, name: &str, about: &str, build: BuildFn) -> Self {
        self.job_with_queries(name, about, build, &[])
    }

    /// Adds a job that bundles several queries, chosen with `--query`.
    pub fn job_with_queries(
        mut self,
        name: &str,
        about: &str,
        build: BuildFn,
        queries: &'static [&'static str],
    ) -> Self {
        self.jobs.push(JobSpec {
            name: name.to_string(),
            about: about.to_string(),
            build,
            queries,
        });
        self
    }

    /// All jobs, in registration order.
    pub fn jobs(&self) -> &[JobSpec] {
        &self.jobs
    }

    /// The job called `name`, or an error listing the ones that exist.
    pub fn get(&self, name: &str) -> anyhow::Result<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            anyhow::Error::new(crate::options::UsageError(format!(
                "no job called `{name}`; the jobs are: {} (see `weir jobs`)",
                names.join(", ")
            )))
        })
    }
}
