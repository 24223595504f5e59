//! Statements prepared once per connection and kept with it. With the `postgres` crate a
//! query given as text is prepared anew on every call, a round trip of its own; a cached
//! statement costs one round trip to run, not two.

use std::collections::HashMap;

use postgres::{GenericClient, Statement};

use crate::error::{Context, StoreError};

/// The statements prepared on one connection, by their SQL text. A statement belongs to the
/// connection that prepared it: clear the cache when the connection is replaced.
#[derive(Default)]
pub(crate) struct Statements(HashMap<&'static str, Statement>);

impl Statements {
    /// `sql` prepared on `c`, once per connection.
    pub(crate) fn get(
        &mut self,
        c: &mut impl GenericClient,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let statement = c.prepare(sql).context("preparing a statement")?;
        self.0.insert(sql, statement.clone());
        Ok(statement)
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}
