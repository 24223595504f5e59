//! `tidings audit verify`: recomputes every organization's audit chain.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use tidings_domain::audit::{ChainProblem, ChainVerifier};
use tidings_store::Store;

/// The result of checking one chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub chain: String,
    pub records: usize,
    pub problems: Vec<ChainProblem>,
}

/// Verifies every chain, or only the one named, in one pass over the whole log in number
/// order (each record checked against its chain's last two hashes), showing progress on
/// stderr for long logs. Every row is read, whatever any index of the store says.
pub async fn verify(store: &dyn Store, only: Option<&str>) -> anyhow::Result<Vec<ChainReport>> {
    let mut chains: BTreeMap<String, ChainVerifier> = BTreeMap::new();
    if let Some(chain) = only {
        chains.insert(
            chain.to_string(),
            ChainVerifier::new(store.audit_chain_start(chain).await?),
        );
    }
    let mut after = None;
    let mut read = 0usize;
    loop {
        let page = store.audit_log_page(after, 10_000).await?;
        let Some((_, last)) = page.last() else { break };
        after = Some(last.record.id.number);
        for (chain, record) in page {
            read += 1;
            if read.is_multiple_of(1_000_000) {
                eprintln!("read {read} audit records");
            }
            if only.is_some_and(|o| o != chain) {
                continue;
            }
            let verifier = match chains.entry(chain) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let start = store.audit_chain_start(e.key()).await?;
                    e.insert(ChainVerifier::new(start))
                }
            };
            verifier.check(&record);
        }
    }
    Ok(chains
        .into_iter()
        .map(|(chain, verifier)| ChainReport {
            chain,
            records: verifier.records(),
            problems: verifier.finish(),
        })
        .collect())
}
