//! `tidings keys create|list|revoke`: key management straight on the store, so it works
//! while the server runs (the server looks keys up on every request).

use anyhow::{Context, bail};
use tidings_domain::audit::AuditContext;
use tidings_domain::keys::hash_secret;
use tidings_domain::{ApiKey, KeyId, NewApiKey, OrgId, Scope};
use tidings_store::{Store, generate_key_secret};

/// Key commands are run by an operator on the command line.
fn operator() -> AuditContext {
    AuditContext::operator(concat!("tidings-cli/", env!("CARGO_PKG_VERSION")))
}

/// Creates a key and returns it with its secret (the only time the secret is known).
pub async fn create(
    store: &dyn Store,
    organization_id: Option<OrgId>,
    scopes: Vec<Scope>,
    description: Option<String>,
    rate_limit: Option<u32>,
) -> anyhow::Result<(ApiKey, String)> {
    if rate_limit == Some(0) {
        bail!("--rate-limit must be at least 1 request per second");
    }
    if organization_id.is_some() && scopes.contains(&Scope::EventsIngest) {
        bail!("events:ingest is for platform keys only: use --platform instead of --org");
    }
    let secret = generate_key_secret();
    let key = store
        .create_key(
            NewApiKey {
                organization_id,
                scopes,
                rate_limit,
                description,
            },
            hash_secret(&secret),
            &operator(),
        )
        .await
        .context("storing the key")?;
    Ok((key, secret))
}

pub async fn revoke(store: &dyn Store, id: &str) -> anyhow::Result<ApiKey> {
    let id: KeyId = id
        .parse()
        .map_err(|e: tidings_domain::IdError| anyhow::anyhow!(e.0))?;
    store
        .revoke_key(id, &operator())
        .await
        .context("revoking the key")?
        .with_context(|| format!("no key {id}"))
}

/// A plain-text table of keys.
pub fn render_table(keys: &[ApiKey]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<22} {:<21} {}\n",
        "ID", "ORGANIZATION", "CREATED", "REVOKED", "SCOPES"
    );
    for k in keys {
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
        out.push_str(&format!(
            "{:<16} {:<16} {:<22} {:<21} {}\n",
            k.id.to_string(),
            k.organization_id
                .as_ref()
                .map_or("(platform)".to_string(), |o| o.to_string()),
            tidings_domain::event::format_timestamp(&k.created_at),
            k.revoked_at
                .as_ref()
                .map_or("-".to_string(), tidings_domain::event::format_timestamp),
            scopes.join(","),
        ));
    }
    out
}
