//! The one way list queries are built: conditions with numbered parameters, the keyset
//! position of the page, and the page's order and size (one row more than asked, to learn
//! whether there is more).

use rusqlite::Connection;
use rusqlite::types::Value;
use rusqlite::{Row, params_from_iter};
use tidings_domain::{Order, TimeRange};

use crate::error::{Context, StoreError};
use crate::rows::into_page;
use crate::{Page, PageRequest};

/// `columns` (a list such as `EVENT_COLUMNS`) each taken from the table aliased `alias`,
/// for a query that joins an index table to it.
pub(crate) fn qualified(alias: &str, columns: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Default)]
pub(crate) struct ListQuery {
    conds: Vec<String>,
    args: Vec<Value>,
}

impl ListQuery {
    /// Adds a condition whose `?` is bound to `value`.
    pub fn cond(&mut self, sql: &str, value: Value) -> &mut Self {
        self.args.push(value);
        self.conds
            .push(sql.replace('?', &format!("?{}", self.args.len())));
        self
    }

    /// Adds a condition that binds nothing of its own (placeholders made by [`Self::bind`]).
    pub fn raw(&mut self, sql: String) -> &mut Self {
        self.conds.push(sql);
        self
    }

    pub fn eq(&mut self, column: &str, value: impl Into<Value>) -> &mut Self {
        self.cond(&format!("{column} = ?"), value.into())
    }

    /// `created_at` (unix seconds) within `[from, to)`.
    pub fn created_within(&mut self, range: &TimeRange) -> &mut Self {
        let (from, to) = range.as_unix_seconds();
        if let Some(f) = from {
            self.cond("created_at >= ?", Value::Integer(f));
        }
        if let Some(t) = to {
            self.cond("created_at < ?", Value::Integer(t));
        }
        self
    }

    /// Binds a value for use in hand-written SQL; returns its placeholder.
    pub fn bind(&mut self, value: Value) -> String {
        self.args.push(value);
        format!("?{}", self.args.len())
    }

    /// Binds a placeholder whose value each run sets in its copy of [`Self::args`];
    /// returns the placeholder and its index there.
    pub fn slot(&mut self) -> (String, usize) {
        let placeholder = self.bind(Value::Null);
        (placeholder, self.args.len() - 1)
    }

    pub fn conditions(&self) -> String {
        if self.conds.is_empty() {
            "1".into()
        } else {
            self.conds.join(" AND ")
        }
    }

    /// Runs `SELECT columns FROM source WHERE … [after the page's position] ORDER BY seq`
    /// and maps the rows into a page.
    pub fn page<T>(
        mut self,
        conn: &Connection,
        columns: &str,
        source: &str,
        page: PageRequest,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<Page<T>, StoreError> {
        let (dir, cmp) = match page.order {
            Order::Desc => ("DESC", "seq < ?"),
            Order::Asc => ("ASC", "seq > ?"),
        };
        if let Some(after) = page.after {
            self.cond(cmp, Value::Integer(after as i64));
        }
        let sql = format!(
            "SELECT {columns} FROM {source} WHERE {} ORDER BY seq {dir} LIMIT {}",
            self.conditions(),
            page.limit + 1
        );
        let mut stmt = conn
            .prepare_cached(&sql)
            .context("preparing a list query")?;
        let rows = stmt
            .query_map(params_from_iter(self.args.iter()), map)
            .context("running a list query")?;
        let mut items = Vec::with_capacity(page.limit as usize + 1);
        for row in rows {
            items.push(row.context("reading a list row")??);
        }
        Ok(into_page(items, page.limit))
    }

    pub fn args(&self) -> &[Value] {
        &self.args
    }
}
