//! Errors of the connectors. Each names the file (and line) involved and what to do.

use std::path::PathBuf;

/// A connector failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A file could not be opened or created.
    #[error("cannot open {path} (check the path and its permissions)")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading failed after the file was opened.
    #[error("cannot read {path} after line {line}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The last line read completely.
        line: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file source was read before it opened its file (a bug of weir's, not the input's).
    #[error("the file source read before it opened its file: please report this bug")]
    NotOpen,
    /// Writing failed.
    #[error("cannot write {path}{}", full_disk_hint(source))]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A restored checkpoint's output part is in neither of its two states.
    #[error(
        "{dir} does not hold part {part} of the output of the restored checkpoint (neither \
         {in_progress} nor {committed} is there): resume with the --output of the run that \
         took the checkpoint, or derive the output afresh into this one with \
         --replay-from beginning"
    )]
    MissingPart {
        /// The output directory.
        dir: PathBuf,
        /// The part's number.
        part: u64,
        /// The part's name while in progress.
        in_progress: String,
        /// The part's name once committed.
        committed: String,
    },
    /// A result could not be encoded as JSON.
    #[error("cannot encode a result for {path} as JSON")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An Arrow IPC file could not be read, or a record batch of it does not fit the job.
    #[error("{path}: {message}")]
    Arrow {
        /// The file.
        path: PathBuf,
        /// What went wrong (and in which record batch), and what to do.
        message: String,
    },
    /// A CSV file's header row does not fit the job.
    #[error("{path}: line 1: {message}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong with the header.
        message: String,
    },
}

/// What to do about a full disk, if that is what `error` is.
fn full_disk_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            " (the disk is full: free space or write to another disk, then run again)"
        }
        _ => "",
    }
}

/// Creates (truncates) `path`, creating its parent directories first.
pub(crate) fn create_file(path: &std::path::Path) -> Result<std::fs::File, ConnectorError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| {
            // `a/b` with `a` a file fails with "File exists": name the file in the way.
            match parent.ancestors().find(|a| a.is_file()) {
                Some(file) => ConnectorError::Open {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        format!("{} is a file, not a directory", file.display()),
                    ),
                },
                None => ConnectorError::Open {
                    path: parent.to_path_buf(),
                    source,
                },
            }
        })?;
    }
    std::fs::File::create(path).map_err(|source| ConnectorError::Open {
        path: path.to_path_buf(),
        source,
    })
}
