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
    /// Writing failed.
    #[error("cannot write {path} (is the disk full?)")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
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

/// Creates (truncates) `path`, creating its parent directories first.
pub(crate) fn create_file(path: &std::path::Path) -> Result<std::fs::File, ConnectorError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| ConnectorError::Open {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::File::create(path).map_err(|source| ConnectorError::Open {
        path: path.to_path_buf(),
        source,
    })
}
