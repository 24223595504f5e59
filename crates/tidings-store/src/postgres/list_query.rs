//! The one way list queries are built on PostgreSQL: conditions with numbered parameters,
//! the keyset position of the page, and the page's order and size (one row more than asked,
//! to learn whether there is more).

use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use tidings_domain::{Order, TimeRange};

use crate::error::{Context, StoreError};
use crate::rows::into_page;
use crate::{Page, PageRequest};

/// A bound parameter.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

#[derive(Default)]
pub(crate) struct ListQuery {
    conds: Vec<String>,
    args: Vec<Param>,
}

impl ListQuery {
    /// Adds a condition whose `?` is bound to `value`.
    pub fn cond(&mut self, sql: &str, value: impl ToSql + Sync + Send + 'static) -> &mut Self {
        let mark = self.bind(value);
        self.conds.push(sql.replace('?', &mark));
        self
    }

    pub fn eq(&mut self, column: &str, value: impl ToSql + Sync + Send + 'static) -> &mut Self {
        self.cond(&format!("{column} = ?"), value)
    }

    /// `created_at` (unix seconds) within `[from, to)`.
    pub fn created_within(&mut self, range: &TimeRange) -> &mut Self {
        let (from, to) = range.as_unix_seconds();
        if let Some(f) = from {
            self.cond("created_at >= ?", f);
        }
        if let Some(t) = to {
            self.cond("created_at < ?", t);
        }
        self
    }

    /// Binds a value for use in hand-written SQL; returns its placeholder.
    pub fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.args.push(Box::new(value));
        format!("${}", self.args.len())
    }

    pub fn conditions(&self) -> String {
        if self.conds.is_empty() {
            "true".into()
        } else {
            self.conds.join(" AND ")
        }
    }

    /// The bound values, in placeholder order, as the driver takes them.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }

    /// Runs `SELECT columns FROM source WHERE … [after the page's position] ORDER BY seq`
    /// and maps the rows into a page.
    pub fn page<T>(
        mut self,
        c: &mut impl GenericClient,
        columns: &str,
        source: &str,
        page: PageRequest,
        mut map: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Page<T>, StoreError> {
        let (dir, cmp) = match page.order {
            Order::Desc => ("DESC", "seq < ?"),
            Order::Asc => ("ASC", "seq > ?"),
        };
        if let Some(after) = page.after {
            self.cond(cmp, after as i64);
        }
        let sql = format!(
            "SELECT {columns} FROM {source} WHERE {} ORDER BY seq {dir} LIMIT {}",
            self.conditions(),
            page.limit + 1
        );
        let rows = c
            .query(&sql, &self.params())
            .context("running a list query")?;
        let items = rows.iter().map(&mut map).collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(items, page.limit))
    }
}
