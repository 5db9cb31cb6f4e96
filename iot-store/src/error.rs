//! The store's error type.

use iot_core::ErrorKind;

/// Why a store call failed. `Clone` so one failed group commit can be reported to every
/// caller whose ops were in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The input violates a documented rule; nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// An op's expected shadow version did not match (`current` is the stored version, `None`
    /// when the shadow does not exist).
    #[error("version conflict at op {index}: stored version is {current:?}")]
    Conflict {
        /// Index of the conflicting op in its batch.
        index: usize,
        /// The version stored now.
        current: Option<u64>,
    },
    /// The database holds tables that this crate did not create, or its metadata names
    /// another application. Nothing was changed.
    #[error("not an iot-store database: {0}")]
    Foreign(String),
    /// The database was written by a newer build (schema `found`, this build knows up to
    /// `supported`). Nothing was changed.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// The schema version recorded in the database.
        found: u32,
        /// [`crate::SCHEMA_VERSION`].
        supported: u32,
    },
    /// The file is not a database, or stored values are not what this crate writes.
    #[error("database is corrupt: {0}")]
    Corrupt(String),
    /// The disk or the database is full; the transaction was rolled back.
    #[error("storage full: {0}")]
    Full(String),
    /// The connection to the database server was lost, or could not be made. The next call
    /// reconnects. A transaction cut before its commit was rolled back by the server; when
    /// the connection broke while the commit itself was in flight, the server may have
    /// committed it (a retried shadow write then reports a conflict naming the version it
    /// wrote).
    #[error("database connection lost: {0}")]
    ConnectionLost(String),
    /// The audit trail does not verify, first at entry `seq`.
    #[error("audit chain broken at entry {seq}")]
    AuditChainBroken {
        /// The first entry (or the head, when the trail ends early) that does not check.
        seq: u64,
    },
    /// The group-commit queue is full ([`crate::GroupCommitHandle::try_submit`] only).
    #[error("group commit queue is full")]
    Busy,
    /// The group-commit writer has stopped.
    #[error("group commit writer has stopped")]
    Closed,
    /// Any other database error, with the database's message.
    #[error("database error: {0}")]
    Backend(String),
}

impl iot_core::Error for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Foreign(_) | Self::SchemaTooNew { .. } | Self::Closed => ErrorKind::InvalidState,
            Self::Corrupt(_) | Self::AuditChainBroken { .. } => ErrorKind::Decode,
            Self::Full(_) | Self::Busy => ErrorKind::Capacity,
            Self::ConnectionLost(_) => ErrorKind::Transport,
            Self::Backend(_) => ErrorKind::Storage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::Error as _;

    #[test]
    fn kinds_let_generic_code_react() {
        assert_eq!(
            StoreError::Conflict {
                index: 0,
                current: Some(3)
            }
            .kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            StoreError::ConnectionLost("x".into()).kind(),
            ErrorKind::Transport
        );
        assert_eq!(StoreError::Full("x".into()).kind(), ErrorKind::Capacity);
        assert_eq!(
            StoreError::SchemaTooNew {
                found: 9,
                supported: 1
            }
            .kind(),
            ErrorKind::InvalidState
        );
    }
}
