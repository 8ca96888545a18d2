//! A throwaway PostgreSQL server for a test: `initdb` in a temporary directory (trust
//! authentication, superuser `weir`), listening on 127.0.0.1 only at a free port, its unix
//! socket in that directory; stopped (immediate shutdown) and removed when dropped.
//!
//! The server's binaries come from `PATH` or else Debian's `/usr/lib/postgresql/*/bin`
//! (`scripts/setup` installs the `postgresql` package). `initdb` and the server refuse to
//! run as root: when the tests run as root (CI and the dev machines do), they run as the
//! `postgres` user the package creates (`runuser -u postgres`), and the directory is
//! handed to that user.

use std::error::Error;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use super::failure;

/// A running server, stopped when dropped.
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The user the server runs as, if not this process's (root's).
    run_as: Option<&'static str>,
    /// Its TCP port on 127.0.0.1.
    pub(crate) port: u16,
}

impl Postgres {
    /// Creates and starts a server.
    pub(crate) fn start() -> Result<Postgres, Box<dyn Error>> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new().prefix("weir-pg-").tempdir()?;
        let root = std::fs::metadata("/proc/self")?.uid() == 0;
        let run_as = root.then_some("postgres");
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                return Err(failure(
                    "chown of the server's directory to postgres failed",
                ));
            }
        }
        let mut server = Postgres {
            port: 0,
            dir,
            bin,
            run_as,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "weir",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        // A port that was free a moment ago; another process may take it first: try again.
        let mut last = None;
        for _ in 0..3 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let options = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
                server.port,
                server.dir.path().display()
            );
            let log = format!("{}/server.log", server.dir.path().display());
            match server.run(
                "pg_ctl",
                &[
                    "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
                ],
            ) {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| failure("the server did not start")))
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    /// Runs one of the server's programs, as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), Box<dyn Error>> {
        let path = self.bin.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let output = command.args(args).current_dir(self.dir.path()).output()?;
        if !output.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            return Err(failure(format!(
                "{} {} failed ({}):\n{}{}\n{log}",
                path.display(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }

    /// A `postgres://` URI of its `postgres` database with the query `query`.
    pub(crate) fn uri(&self, query: &str) -> String {
        format!("postgres://weir@127.0.0.1:{}/postgres?{query}", self.port)
    }

    /// A client connection.
    pub(crate) fn client(&self) -> Result<postgres::Client, Box<dyn Error>> {
        let config = format!(
            "host=127.0.0.1 port={} user=weir dbname=postgres",
            self.port
        );
        Ok(postgres::Client::connect(&config, postgres::NoTls)?)
    }

    /// The rows of `table` as JSON objects (`row_to_json`).
    pub(crate) fn rows(&self, table: &str) -> Result<Vec<serde_json::Value>, Box<dyn Error>> {
        let sql = format!("SELECT row_to_json(t)::text FROM {table} t");
        self.client()?
            .query(&sql, &[])?
            .iter()
            .map(|row| Ok(serde_json::from_str(row.get::<_, &str>(0))?))
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// The directory of `initdb` and `pg_ctl`: from `PATH`, else the newest Debian install.
fn binaries() -> Result<PathBuf, Box<dyn Error>> {
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        failure(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in \
             /usr/lib/postgresql/*/bin: run ./scripts/setup (Debian's postgresql package)",
        )
    })
}

/// `weir run window-agg` with 10 s tumbling windows, 2 s watermark delay, no metrics and
/// no progress, from `input` to `output`: the job of the PostgreSQL tests.
pub(crate) fn window_agg(input: impl AsRef<OsStr>, output: impl AsRef<OsStr>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "run",
        "window-agg",
        "--window",
        "tumble:10s",
        "--watermark-delay",
        "2s",
        "--metrics-addr",
        "off",
        "--quiet",
        "--output",
    ]
    .map(OsString::from)
    .to_vec();
    args.push(output.as_ref().to_owned());
    args.push("--input".into());
    args.push(input.as_ref().to_owned());
    args
}
