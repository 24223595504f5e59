use tidings_domain::FieldProblem;

/// Why a store operation failed. Internal details stay in the message for logs; the HTTP
/// layer shows clients only what they can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request conflicts with what is stored (e.g. a workspace already known to belong to
    /// another organization). Nothing was written.
    #[error("the batch conflicts with stored data")]
    Rejected(Vec<FieldProblem>),
    #[error("database error while {context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("PostgreSQL error while {context}: {source}")]
    Postgres {
        context: &'static str,
        #[source]
        source: postgres::Error,
    },
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error(
        "the database schema is at version {found}, newer than this build knows ({known}); upgrade Tidings"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// The request would touch more rows than allowed at once.
    #[error("the request covers more than {limit} items, the most allowed at once")]
    TooMany { limit: usize },
    /// A write failed for a whole group commit; the message names the cause.
    #[error("the write could not be committed: {0}")]
    Write(String),
    #[error("the store is shutting down")]
    Closed,
}

/// Attaches a short description of what was being done to a database error.
pub(crate) trait Context<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
    }
}

impl<T> Context<T> for Result<T, postgres::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Postgres { context, source })
    }
}
