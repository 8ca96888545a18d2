//! `weir new NAME`: a crate with a job of its own (the page-dwell example,
//! `examples/custom-job`) that builds against this weir without building its dependencies
//! again: weir's source as a path dependency, weir's `Cargo.lock` (the same versions of
//! every dependency), weir's release profile and weir's build directory (so RocksDB,
//! librdkafka and the rest, compiled for weir, are reused; only weir's own crates and the
//! new one are compiled for it).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::options::usage;

/// What `weir new` was asked for.
#[derive(Debug, Clone)]
pub struct NewCrate {
    /// The crate's (and its binary's) name.
    pub name: String,
    /// Where to create it; `./NAME` if not given.
    pub dir: Option<PathBuf>,
    /// weir's source checkout; the one this binary was built from if not given.
    pub weir: Option<PathBuf>,
    /// The build directory to share with weir; if not given `$CARGO_TARGET_DIR`, else the
    /// one this binary was built into, else `WEIR/target`.
    pub target_dir: Option<PathBuf>,
}

/// The dependencies of the new crate besides weir-jobs, taken from weir's
/// `[workspace.dependencies]` so that their features are the ones weir builds with.
const DEPENDENCIES: [&str; 3] = ["anyhow", "clap", "serde"];

/// What [`create`] made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The build directory it shares with weir.
    pub target_dir: PathBuf,
}

/// Creates the crate; refuses a directory that exists and is not empty, a name cargo would
/// refuse, and a weir checkout that is not one.
pub fn create(new: &NewCrate) -> anyhow::Result<Created> {
    let name = &new.name;
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        usage!("`{name}` cannot name a crate: use letters, digits, `-` and `_`, starting with a letter");
    }
    let weir = absolute(&new.weir.clone().unwrap_or_else(built_from))?;
    let read = |file: &str| {
        std::fs::read_to_string(weir.join(file)).map_err(|e| {
            anyhow::Error::new(crate::options::UsageError(format!(
                "{} is not weir's source checkout ({file}: {e}): pass --weir DIR",
                weir.display()
            )))
        })
    };
    let manifest = read("Cargo.toml")?;
    let lock = read("Cargo.lock")?;
    let main = read("examples/custom-job/src/main.rs")?;
    let dir = absolute(&new.dir.clone().unwrap_or_else(|| PathBuf::from(name)))?;
    if dir
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        usage!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    let target_dir = absolute(&new.target_dir.clone().unwrap_or_else(|| target_dir(&weir)))?;
    let write = |file: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("Cargo.toml", &cargo_toml(name, &weir, &manifest)?)?;
    write("Cargo.lock", &lock)?;
    write("src/main.rs", &main)?;
    write(
        ".cargo/config.toml",
        &format!(
            "# weir's build directory: the dependencies compiled for weir are reused.\n\
             [build]\ntarget-dir = {}\n",
            toml_string(&target_dir)
        ),
    )?;
    write(".gitignore", "/target\n")?;
    Ok(Created { dir, target_dir })
}

/// The new crate's manifest: its dependencies as weir declares them, weir-jobs from
/// `weir`, a workspace of its own, and weir's profiles (`manifest` is weir's Cargo.toml).
pub fn cargo_toml(name: &str, weir: &Path, manifest: &str) -> anyhow::Result<String> {
    let mut dependencies = String::new();
    for dependency in DEPENDENCIES {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(&format!("{dependency} = ")))
            .with_context(|| format!("weir's Cargo.toml does not declare {dependency}"))?;
        dependencies.push_str(line);
        dependencies.push('\n');
    }
    let jobs = toml_string(&weir.join("jobs"));
    Ok(format!(
        "[package]\n\
         name = \"{name}\"\n\
         version = \"0.1.0\"\n\
         edition = \"2021\"\n\
         publish = false\n\
         \n\
         [dependencies]\n\
         # As weir declares them: the same features, so what weir built is reused.\n\
         {dependencies}\
         weir-jobs = {{ path = {jobs} }}\n\
         \n\
         # A workspace of its own, not a member of one around it.\n\
         [workspace]\n\
         \n\
         # weir's profiles, for the same reason (`--release` is the one to use).\n\
         {}",
        profiles(manifest)
    ))
}

/// The `[profile.*]` sections of a manifest, without their comments.
fn profiles(manifest: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            keep = line.starts_with("[profile.");
            if keep && !out.is_empty() {
                out.push('\n');
            }
        }
        if keep && !line.starts_with('#') && !line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `path` as a TOML basic string.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `path` made absolute against the working directory.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// The weir checkout this binary was built from.
fn built_from() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `$CARGO_TARGET_DIR`, else the build directory this binary is in (`T/release/weir`),
/// else `weir/target`.
fn target_dir(weir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().ok();
    let built_into = exe
        .as_deref()
        .and_then(Path::parent)
        .filter(|profile| profile.join("deps").is_dir())
        .and_then(Path::parent);
    match built_into {
        Some(dir) => dir.to_path_buf(),
        None => weir.join("target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_has_weirs_dependency_specs_and_profiles() -> anyhow::Result<()> {
        let manifest = "[workspace.dependencies]\nanyhow = \"1\"\nclap = { version = \"4\" }\n\
                        serde = \"1\"\n# why\n[profile.release]\n# why not\ndebug = 1\n\n\
                        [workspace.lints.rust]\nx = 1\n[profile.release.package.a]\nb = 2\n";
        let toml = cargo_toml("j", Path::new("/w \"q\""), manifest)?;
        assert!(toml.contains("\nclap = { version = \"4\" }\n"), "{toml}");
        assert!(
            toml.contains("weir-jobs = { path = \"/w \\\"q\\\"/jobs\" }"),
            "{toml}"
        );
        assert!(
            toml.ends_with("[profile.release]\ndebug = 1\n\n[profile.release.package.a]\nb = 2\n"),
            "{toml}"
        );
        assert!(!toml.contains("lints") && !toml.contains("why"), "{toml}");
        assert!(cargo_toml("j", Path::new("/w"), "anyhow = \"1\"").is_err());
        Ok(())
    }
}
