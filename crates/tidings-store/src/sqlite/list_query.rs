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

/// `LIMIT` on the bound parameter `param`, written `LIMIT ?n + 0` so that only the running
/// statement reads its value. SQLite (3.50) reads the value of a plain `LIMIT ?n` when it
/// plans, and a statement whose plan read a parameter is parsed and planned again the
/// next time it runs after that parameter is bound anew: every run of a cached statement.
/// Event queries were prepared again on every probe, 30 % of the server's time for a
/// subject with few events in a store of 10M (BENCHMARKS.md). The often-run statements
/// written as literals spell it out the same way; each has its plan fixed by the statement
/// itself (a rowid range, `CROSS JOIN`, `INDEXED BY`). The retention sweeps run rarely and
/// their plan may rest on the LIMIT's value, so they keep a plain one.
pub(crate) fn bound_limit(param: &str) -> String {
    format!("LIMIT {param} + 0")
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, StatementStatus};

    use super::bound_limit;

    /// How many times a cached statement with `limit` was prepared again over three runs,
    /// each binding a new value.
    fn prepared_again(conn: &Connection, limit: &str) -> i32 {
        let sql = format!("SELECT x FROM t WHERE x > ?1 ORDER BY x {limit}");
        for n in 1..=3 {
            let mut stmt = conn.prepare_cached(&sql).unwrap();
            let rows: Vec<i64> = stmt
                .query_map([0, n], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(rows.len(), n as usize);
        }
        conn.prepare_cached(&sql)
            .unwrap()
            .get_status(StatementStatus::RePrepare)
    }

    #[test]
    fn a_bound_limit_does_not_make_the_statement_prepared_again() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x INTEGER PRIMARY KEY);
             INSERT INTO t VALUES (1), (2), (3), (4);",
        )
        .unwrap();
        // What the helper avoids: SQLite plans with a plain LIMIT's value, so every run
        // after a new binding prepares the statement again.
        assert!(prepared_again(&conn, "LIMIT ?2") >= 2);
        assert_eq!(prepared_again(&conn, &bound_limit("?2")), 0);
    }
}
