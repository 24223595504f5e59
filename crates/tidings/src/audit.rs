//! `tidings audit verify`: recomputes every organization's audit chain.

use tidings_domain::audit::{ChainProblem, verify_chain};
use tidings_store::Store;

/// The result of checking one chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub chain: String,
    pub records: usize,
    pub problems: Vec<ChainProblem>,
}

/// Verifies the chains named, or all of them. Reads each chain in pages, showing progress
/// on stderr for long ones.
pub async fn verify(store: &dyn Store, only: Option<&str>) -> anyhow::Result<Vec<ChainReport>> {
    let chains = match only {
        Some(c) => vec![c.to_string()],
        None => store.audit_chains().await?,
    };
    let mut reports = Vec::with_capacity(chains.len());
    for chain in chains {
        let start = store.audit_chain_start(&chain).await?;
        let mut records = Vec::new();
        let mut after = None;
        loop {
            let page = store.audit_chain_page(&chain, after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.record.id.number);
            records.extend(page);
            if records.len() % 100_000 == 0 {
                eprintln!("{chain}: read {} records", records.len());
            }
        }
        reports.push(ChainReport {
            problems: verify_chain(start, &records),
            records: records.len(),
            chain,
        });
    }
    Ok(reports)
}
