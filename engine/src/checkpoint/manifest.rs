//! The on-disk form of a checkpoint: a directory `chk-NNNNNN` holding the participants'
//! files (RocksDB checkpoints) and, written last, `_manifest`.
//!
//! # Invariants
//! - A checkpoint is complete iff its `_manifest` exists. The manifest is written to a
//!   temporary file, synced, and renamed into place, so it is never seen half-written.
//! - `_manifest` is two lines: the manifest as JSON, then the CRC-32 of that line. Every
//!   other file of the checkpoint is listed in it with its size and CRC-32, so a truncated or
//!   flipped file is detected before anything is restored from it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::{ConnectorState, ParticipantState};
use super::{CheckpointError, CheckpointId};

const MANIFEST: &str = "_manifest";
const MANIFEST_TMP: &str = "_manifest.tmp";
/// 3: each participant's state is typed ([`ParticipantState`]) and a connector's state
/// carries its kind and version. Version 2 (participants keyed by operator uid, their state
/// untyped) is read and upgraded ([`upgrade_v2`]); version 1 (keyed by node name) is
/// refused: its state cannot be matched safely.
const FORMAT_VERSION: u32 = 3;
/// The untyped version before [`FORMAT_VERSION`], still read.
const UNTYPED_VERSION: u32 = 2;

/// What a complete checkpoint contains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this manifest.
    pub version: u32,
    /// The checkpoint's id (ids grow by one per checkpoint attempt).
    pub id: CheckpointId,
    /// The job that took it.
    pub job: String,
    /// When it completed, in epoch milliseconds.
    pub completed_unix_ms: u64,
    /// Workers per keyed operator when it was taken.
    pub parallelism: usize,
    /// True for the checkpoint taken at the end of all input.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The job's operators when it was taken, by uid.
    pub operators: BTreeMap<String, OperatorRecord>,
    /// Each participant's snapshot (source positions, operator metadata, sink commits),
    /// keyed `UID#INSTANCE`.
    pub participants: BTreeMap<String, ParticipantState>,
    /// Every file of the checkpoint directory but the manifest.
    pub files: Vec<FileEntry>,
}

/// One operator of the job that took a checkpoint, under its uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    /// Its node name (`weir describe`).
    pub name: String,
    /// What kind of operator it is (`Source`, `Keyed window`, `Sink`, ..): state is only
    /// restored into an operator of the same kind.
    pub kind: String,
    /// What it does, as `weir describe` says (for messages).
    pub detail: String,
    /// True if its uid was derived from its place in the graph, not set with `.uid(..)`.
    pub derived: bool,
}

/// The uid a participant key (`UID#INSTANCE`) belongs to.
pub fn uid_of_participant(key: &str) -> &str {
    key.rsplit_once('#').map_or(key, |(uid, _)| uid)
}

/// One file of a checkpoint, with what it must look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the checkpoint directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the contents.
    pub crc32: u32,
}

/// The directory of checkpoint `id` under `root`.
pub fn checkpoint_dir(root: &Path, id: CheckpointId) -> PathBuf {
    root.join(format!("chk-{id:06}"))
}

fn io_error(path: &Path, e: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn crc_of_file(path: &Path) -> Result<(u64, u32), CheckpointError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io_error(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((bytes, hasher.finalize()))
}

/// CRCs of files already checksummed, by (device, inode, size, mtime). RocksDB checkpoints
/// hard-link immutable SST files, so most files of a checkpoint were seen by the one before.
#[derive(Debug, Default)]
pub struct ChecksumCache {
    known: FxHashMap<(u64, u64, u64, i64), u32>,
}

impl ChecksumCache {
    /// Lists every file under `dir` (but the manifest) with its size and CRC.
    pub fn files(&mut self, dir: &Path) -> Result<Vec<FileEntry>, CheckpointError> {
        use std::os::unix::fs::MetadataExt;
        let mut seen = FxHashMap::default();
        let mut entries = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(|e| io_error(&d, e))? {
                let entry = entry.map_err(|e| io_error(&d, e))?;
                let path = entry.path();
                let meta = entry.metadata().map_err(|e| io_error(&path, e))?;
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                if name == MANIFEST || name == MANIFEST_TMP {
                    continue;
                }
                let id = (meta.dev(), meta.ino(), meta.len(), meta.mtime());
                let crc32 = match self.known.get(&id) {
                    Some(&crc) => crc,
                    None => crc_of_file(&path)?.1,
                };
                seen.insert(id, crc32);
                entries.push(FileEntry {
                    path: name,
                    bytes: meta.len(),
                    crc32,
                });
            }
        }
        // Forget files no longer part of any checkpoint.
        self.known = seen;
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

impl Manifest {
    /// A manifest of the current format version.
    pub fn new(
        id: CheckpointId,
        job: &str,
        parallelism: usize,
        is_final: bool,
        operators: BTreeMap<String, OperatorRecord>,
        participants: BTreeMap<String, ParticipantState>,
        files: Vec<FileEntry>,
    ) -> Self {
        let completed_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Manifest {
            version: FORMAT_VERSION,
            id,
            job: job.to_string(),
            completed_unix_ms,
            parallelism,
            is_final,
            operators,
            participants,
            files,
        }
    }

    /// Writes the manifest into `dir` atomically, completing the checkpoint.
    pub fn write(&self, dir: &Path) -> Result<(), CheckpointError> {
        let json = serde_json::to_string(self).map_err(|e| CheckpointError::Corrupt {
            dir: dir.to_path_buf(),
            reason: format!("cannot encode manifest: {e}"),
        })?;
        let text = format!("{json}\n{:08x}\n", crc32fast::hash(json.as_bytes()));
        let tmp = dir.join(MANIFEST_TMP);
        let mut file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(&tmp, e))?;
        let target = dir.join(MANIFEST);
        std::fs::rename(&tmp, &target).map_err(|e| io_error(&target, e))?;
        sync_dir(dir)
    }

    /// Reads the manifest of `dir` and checks every file it lists.
    pub fn read_verified(dir: &Path) -> Result<Manifest, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            dir: dir.to_path_buf(),
            reason,
        };
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        let mut lines = text.lines();
        let (json, crc) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        let expected = u32::from_str_radix(crc.trim(), 16)
            .map_err(|_| corrupt("the manifest has no checksum line".into()))?;
        if crc32fast::hash(json.as_bytes()) != expected {
            return Err(corrupt("the manifest does not match its checksum".into()));
        }
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let version = serde_json::from_str::<Versioned>(json)
            .map_err(|e| corrupt(format!("the manifest cannot be read: {e}")))?
            .version;
        let manifest = match version {
            FORMAT_VERSION => serde_json::from_str::<Manifest>(json)
                .map_err(|e| corrupt(format!("the manifest cannot be read: {e}")))?,
            UNTYPED_VERSION => serde_json::from_str::<ManifestV2>(json)
                .map_err(|e| corrupt(format!("the manifest cannot be read: {e}")))
                .and_then(|v2| upgrade_v2(v2).map_err(corrupt))?,
            _ => {
                return Err(corrupt(format!(
                    "its format (version {version}) is not one this weir reads (versions \
                     {UNTYPED_VERSION} and {FORMAT_VERSION}; version 1 was written before \
                     operator uids): resume it with the weir that wrote it, or start over"
                )))
            }
        };
        for entry in &manifest.files {
            let file = dir.join(&entry.path);
            let (bytes, crc32) =
                crc_of_file(&file).map_err(|_| corrupt(format!("{} is missing", entry.path)))?;
            if bytes != entry.bytes {
                return Err(corrupt(format!(
                    "{} has {bytes} bytes, the manifest says {}",
                    entry.path, entry.bytes
                )));
            }
            if crc32 != entry.crc32 {
                return Err(corrupt(format!(
                    "{} does not match its checksum (flipped bytes?)",
                    entry.path
                )));
            }
        }
        Ok(manifest)
    }
}

/// A manifest of format version 2: the same fields, each participant's state untyped.
#[derive(Deserialize)]
struct ManifestV2 {
    id: CheckpointId,
    job: String,
    completed_unix_ms: u64,
    parallelism: usize,
    #[serde(rename = "final")]
    is_final: bool,
    operators: BTreeMap<String, OperatorRecord>,
    participants: BTreeMap<String, Value>,
    files: Vec<FileEntry>,
}

/// Reads a version 2 manifest as the current version. Its participants' state has the
/// layout of today's, untagged: the kind of operator recorded under the participant's uid
/// says which state it is. A connector's state becomes [`ConnectorState::unversioned`].
fn upgrade_v2(v2: ManifestV2) -> Result<Manifest, String> {
    let mut participants = BTreeMap::new();
    for (key, value) in v2.participants {
        let uid = uid_of_participant(&key);
        let kind = v2.operators.get(uid).map_or("", |o| o.kind.as_str());
        let unreadable = |e: serde_json::Error| {
            format!("the version 2 state of {key} ({kind}) cannot be read: {e}")
        };
        let state = match kind.split(' ').next().unwrap_or("") {
            "Source" | "ParallelSource" => ParticipantState::Source {
                position: ConnectorState::unversioned(value),
            },
            "Stateless" => {
                ParticipantState::EventTime(serde_json::from_value(value).map_err(unreadable)?)
            }
            "Keyed" => ParticipantState::Keyed(serde_json::from_value(value).map_err(unreadable)?),
            "Sink" => ParticipantState::Sink {
                pre_commit: (!value.is_null()).then(|| ConnectorState::unversioned(value)),
            },
            _ => {
                return Err(format!(
                    "the version 2 state of {key} belongs to no operator it records \
                     (kind `{kind}`)"
                ))
            }
        };
        participants.insert(key, state);
    }
    Ok(Manifest {
        version: FORMAT_VERSION,
        id: v2.id,
        job: v2.job,
        completed_unix_ms: v2.completed_unix_ms,
        parallelism: v2.parallelism,
        is_final: v2.is_final,
        operators: v2.operators,
        participants,
        files: v2.files,
    })
}

/// Checkpoint directories under `root`, by id ascending.
pub fn list(root: &Path) -> Result<Vec<(CheckpointId, PathBuf)>, CheckpointError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_error(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error(root, e))?;
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_prefix("chk-"))
            .and_then(|n| n.parse::<CheckpointId>().ok());
        // Only directories are checkpoints; anything else of that name is left alone.
        if let (Some(id), true) = (id, entry.path().is_dir()) {
            found.push((id, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// True if the checkpoint in `dir` has its manifest (it completed).
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// Finds the newest complete checkpoint that verifies, for a restart. Incomplete
/// checkpoints are removed. Corrupt ones newer than the one found are reported (one line
/// each on stderr) and renamed to `corrupt-chk-NNNNNN` for inspection (their ids are taken
/// again by this run's checkpoints).
///
/// If there are complete checkpoints and none verifies, this fails
/// ([`CheckpointError::NoneUsable`]) and leaves them all in place: starting from empty
/// state instead would silently lose everything they held, so a run must say so itself
/// (`--replay-from beginning`, or `--from-savepoint`).
pub fn latest_valid(root: &Path) -> Result<Option<Manifest>, CheckpointError> {
    let mut unusable: Vec<(CheckpointId, PathBuf, CheckpointError)> = Vec::new();
    for (id, dir) in list(root)?.into_iter().rev() {
        if !is_complete(&dir) {
            std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
            continue;
        }
        match Manifest::read_verified(&dir) {
            Ok(manifest) => {
                for (bad, bad_dir, e) in unusable {
                    let aside = root.join(format!("corrupt-chk-{bad:06}"));
                    eprintln!(
                        "weir: checkpoint {bad} is unusable ({e}); moved to {} and resuming \
                         from checkpoint {id}, the newest that verifies",
                        aside.display()
                    );
                    if aside.exists() {
                        std::fs::remove_dir_all(&aside).map_err(|e| io_error(&aside, e))?;
                    }
                    std::fs::rename(&bad_dir, &aside).map_err(|e| io_error(&bad_dir, e))?;
                }
                return Ok(Some(manifest));
            }
            Err(e) => unusable.push((id, dir, e)),
        }
    }
    if unusable.is_empty() {
        return Ok(None);
    }
    Err(CheckpointError::NoneUsable {
        root: root.to_path_buf(),
        reasons: unusable
            .into_iter()
            .map(|(id, _, e)| format!("checkpoint {id}: {}", e.reason()))
            .collect(),
    })
}

/// Keeps the newest `retained` complete checkpoints up to `newest` and removes older
/// ones, complete or not.
pub fn retain(root: &Path, newest: CheckpointId, retained: usize) -> Result<(), CheckpointError> {
    let mut kept = 0;
    for (id, dir) in list(root)?.into_iter().rev() {
        if id > newest {
            continue;
        }
        if kept < retained.max(1) && is_complete(&dir) {
            kept += 1;
            continue;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint_with_file(root: &Path, id: CheckpointId, contents: &[u8]) -> PathBuf {
        let dir = checkpoint_dir(root, id);
        std::fs::create_dir_all(dir.join("op")).unwrap();
        std::fs::write(dir.join("op/data.sst"), contents).unwrap();
        let files = ChecksumCache::default().files(&dir).unwrap();
        Manifest::new(id, "job", 1, false, BTreeMap::new(), BTreeMap::new(), files)
            .write(&dir)
            .unwrap();
        dir
    }

    #[test]
    fn a_torn_checkpoint_is_ignored_and_removed() {
        let root = tempfile::tempdir().unwrap();
        checkpoint_with_file(root.path(), 1, b"one");
        // Checkpoint 2 never got its manifest (the process died while writing it).
        let torn = checkpoint_dir(root.path(), 2);
        std::fs::create_dir_all(&torn).unwrap();
        std::fs::write(torn.join(MANIFEST_TMP), b"{\"version\":1,").unwrap();
        let latest = latest_valid(root.path()).unwrap().unwrap();
        assert_eq!(latest.id, 1);
        assert!(!torn.exists());
    }

    #[test]
    fn truncated_or_flipped_files_fall_back_to_the_previous_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        checkpoint_with_file(root.path(), 1, b"first state");
        let second = checkpoint_with_file(root.path(), 2, b"second state");
        std::fs::write(second.join("op/data.sst"), b"second stat").unwrap();
        assert_eq!(latest_valid(root.path()).unwrap().unwrap().id, 1);
        assert!(root.path().join("corrupt-chk-000002").exists());

        let third = checkpoint_with_file(root.path(), 3, b"third state");
        std::fs::write(third.join("op/data.sst"), b"third statE").unwrap();
        let err = Manifest::read_verified(&third).unwrap_err().to_string();
        assert!(
            err.contains("op/data.sst does not match its checksum"),
            "{err}"
        );
        assert_eq!(latest_valid(root.path()).unwrap().unwrap().id, 1);
    }

    #[test]
    fn a_corrupt_file_shared_by_every_checkpoint_refuses_the_restart() {
        let root = tempfile::tempdir().unwrap();
        // As RocksDB checkpoints do, every checkpoint hard-links one file.
        let first = checkpoint_with_file(root.path(), 1, b"shared options");
        for id in 2..=3 {
            let dir = checkpoint_dir(root.path(), id);
            std::fs::create_dir_all(dir.join("op")).unwrap();
            std::fs::hard_link(first.join("op/data.sst"), dir.join("op/data.sst")).unwrap();
            let files = ChecksumCache::default().files(&dir).unwrap();
            Manifest::new(id, "job", 1, false, BTreeMap::new(), BTreeMap::new(), files)
                .write(&dir)
                .unwrap();
        }
        std::fs::write(first.join("op/data.sst"), b"shared optionz").unwrap();
        let err = latest_valid(root.path()).unwrap_err().to_string();
        for id in 1..=3 {
            assert!(
                err.contains(&format!("checkpoint {id}: op/data.sst does not match")),
                "{err}"
            );
        }
        assert!(err.contains("--replay-from beginning"), "{err}");
        // Nothing was moved aside: a second attempt is refused the same way.
        assert_eq!(list(root.path()).unwrap().len(), 3);
        assert!(latest_valid(root.path()).is_err());
    }

    #[test]
    fn a_flipped_byte_in_the_manifest_is_detected() {
        let root = tempfile::tempdir().unwrap();
        let dir = checkpoint_with_file(root.path(), 1, b"x");
        let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        std::fs::write(dir.join(MANIFEST), text.replacen("\"job\"", "\"jab\"", 1)).unwrap();
        let err = Manifest::read_verified(&dir).unwrap_err().to_string();
        assert!(err.contains("does not match its checksum"), "{err}");
    }

    /// Writes `json` as the manifest of checkpoint `id`, as weir writes it.
    fn manifest_text(root: &Path, id: CheckpointId, json: &str) -> PathBuf {
        let dir = checkpoint_dir(root, id);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!("{json}\n{:08x}\n", crc32fast::hash(json.as_bytes()));
        std::fs::write(dir.join(MANIFEST), text).unwrap();
        dir
    }

    #[test]
    fn a_checkpoint_of_the_release_before_typed_state_still_loads() {
        // As weir 0.1 (manifest version 2) wrote it: one participant of each kind.
        let root = tempfile::tempdir().unwrap();
        let op =
            |kind: &str| format!(r#"{{"name":"n","kind":"{kind}","detail":"","derived":false}}"#);
        let json = format!(
            r#"{{"version":2,"id":4,"job":"j","completed_unix_ms":1,"parallelism":1,"final":false,
            "operators":{{"in":{},"ts":{},"win":{},"out":{}}},
            "participants":{{"in#0":{{"offset":10,"line":2,"dead_letter_bytes":0}},
            "ts#0":{{"max_ts":5,"current":4,"splits":{{"0":{{"max_ts":5,"current":4}}}}}},
            "win#0":{{"key_groups":[0,128],"store":"win-0","operator":null}},
            "out#0":{{"pending":[]}}}},"files":[]}}"#,
            op("Source"),
            op("Stateless timestamps"),
            op("Keyed window"),
            op("Sink")
        )
        .replace('\n', "");
        let dir = manifest_text(root.path(), 4, &json);
        let manifest = Manifest::read_verified(&dir).unwrap();
        assert_eq!(manifest.version, FORMAT_VERSION);
        let state = |key: &str| &manifest.participants[key];
        assert!(matches!(state("in#0"), ParticipantState::Source { .. }));
        match state("ts#0") {
            ParticipantState::EventTime(clock) => {
                assert_eq!((clock.stream.current, clock.splits.len()), (4, 1))
            }
            other => panic!("{other:?}"),
        }
        match state("win#0") {
            ParticipantState::Keyed(keyed) => assert_eq!(keyed.store, "win-0"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            state("out#0"),
            ParticipantState::Sink {
                pre_commit: Some(_)
            }
        ));
    }

    #[test]
    fn a_manifest_of_an_unknown_format_is_refused_in_one_line_naming_the_versions() {
        let root = tempfile::tempdir().unwrap();
        for version in [1, 4] {
            let dir = manifest_text(root.path(), version, &format!(r#"{{"version":{version}}}"#));
            let err = Manifest::read_verified(&dir).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "its format (version {version}) is not one this weir reads (versions 2 and 3"
                )) && !err.contains('\n'),
                "{err}"
            );
        }
    }

    #[test]
    fn retention_keeps_the_newest_complete_checkpoints() {
        let root = tempfile::tempdir().unwrap();
        for id in 1..=5 {
            checkpoint_with_file(root.path(), id, b"s");
        }
        std::fs::create_dir_all(checkpoint_dir(root.path(), 6)).unwrap();
        retain(root.path(), 5, 3).unwrap();
        let ids: Vec<_> = list(root.path())
            .unwrap()
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(ids, vec![3, 4, 5, 6], "in-flight 6 is left alone");
    }
}
