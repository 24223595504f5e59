//! The outbound HTTP client: signed POSTs per the Standard Webhooks spec, a 15 s limit, no
//! redirects, connection reuse, and the SSRF guard applied on every connection through the
//! client's own resolver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tidings_domain::webhook::{
    ATTEMPT_TIMEOUT, AttemptError, RESPONSE_BODY_LIMIT, SigningSecret, signature_header,
};

use crate::guard::{self, GuardError};

/// What happened to one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub status_code: Option<u16>,
    pub error: Option<AttemptError>,
    /// The first 4 KiB of the response body (lossy UTF-8).
    pub response_body: Option<String>,
    pub duration: Duration,
    /// `Retry-After` in seconds, when the endpoint sent one.
    pub retry_after: Option<Duration>,
}

/// Resolves names and refuses blocked addresses, so the guard holds for every connection.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let addrs = guard::resolve_checked(name.as_str(), 0).await?;
            let iter: Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

/// Shared by the dispatcher and the API (verification, test sends).
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl WebhookClient {
    pub fn new(allow_private: bool) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(32)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("Tidings-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            http: builder.build()?,
            allow_private,
        })
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// POSTs `body` to `url`, signed with every secret, as message `msg_id` at `timestamp`.
    pub async fn send(
        &self,
        url: &str,
        msg_id: &str,
        timestamp: i64,
        body: Vec<u8>,
        secrets: &[SigningSecret],
    ) -> SendOutcome {
        let started = Instant::now();
        let failed = |error: AttemptError| SendOutcome {
            status_code: None,
            error: Some(error),
            response_body: None,
            duration: started.elapsed(),
            retry_after: None,
        };
        // IP literals never reach the resolver: check them (and the URL's form) here.
        let parsed = match guard::check_url(url, self.allow_private) {
            Ok(u) => u,
            Err(_) => return failed(AttemptError::BlockedAddress),
        };
        if !self.allow_private
            && let Some(host) = parsed.host_str()
            && let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
            && guard::is_blocked(ip)
        {
            return failed(AttemptError::BlockedAddress);
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let signature = signature_header(secrets, msg_id, timestamp, &body);
        for (name, value) in [
            ("webhook-id", msg_id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        let response = match self
            .http
            .post(parsed)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return failed(classify(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut response = response;
        let mut kept: Vec<u8> = Vec::new();
        let mut error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = RESPONSE_BODY_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if kept.len() >= RESPONSE_BODY_LIMIT {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The status arrived; a body cut short by the timeout is still a timeout.
                    if e.is_timeout() {
                        error = Some(AttemptError::Timeout);
                    }
                    break;
                }
            }
        }
        SendOutcome {
            status_code: if error.is_some() { None } else { Some(status) },
            error,
            response_body: Some(String::from_utf8_lossy(&kept).into_owned()),
            duration: started.elapsed(),
            retry_after,
        }
    }
}

/// Maps a reqwest error to the attempt's error kind by walking its causes. The guard's own
/// refusal is looked for through the whole chain first: the resolver's error is wrapped in
/// a generic "dns error", which must not hide it.
fn classify(e: &reqwest::Error) -> AttemptError {
    if e.is_timeout() {
        return AttemptError::Timeout;
    }
    let chain = || {
        std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |s| {
            s.source()
        })
    };
    for s in chain() {
        if let Some(g) = s.downcast_ref::<GuardError>() {
            return match g {
                GuardError::BlockedAddress { .. } | GuardError::InvalidUrl(_) => {
                    AttemptError::BlockedAddress
                }
                GuardError::Unresolvable { .. } => AttemptError::Dns,
            };
        }
        if s.to_string().contains("private, loopback, link-local") {
            return AttemptError::BlockedAddress;
        }
    }
    for s in chain() {
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("dns error") || text.contains("does not resolve") {
            return AttemptError::Dns;
        }
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return AttemptError::Tls;
        }
    }
    AttemptError::Connect
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard holds at send time too, for IP literals and for names that resolve to a
    /// private address (the resolver path, as with DNS rebinding), and names the error kind.
    #[tokio::test]
    async fn private_targets_are_refused_when_sending() {
        let client = WebhookClient::new(false).unwrap();
        let secret = SigningSecret::from_random([1; 24]);
        for url in [
            "https://127.0.0.1:9/hook",
            "https://[::1]:9/hook",
            "https://localhost:9/hook",
        ] {
            let out = client
                .send(
                    url,
                    "msg_1",
                    0,
                    b"{}".to_vec(),
                    std::slice::from_ref(&secret),
                )
                .await;
            assert_eq!(out.status_code, None, "{url}");
            assert_eq!(out.error, Some(AttemptError::BlockedAddress), "{url}");
        }
        // The same request with private targets allowed gets as far as connecting.
        let open = WebhookClient::new(true).unwrap();
        let out = open
            .send(
                "http://127.0.0.1:9/hook",
                "msg_1",
                0,
                b"{}".to_vec(),
                std::slice::from_ref(&secret),
            )
            .await;
        assert_eq!(out.error, Some(AttemptError::Connect));
    }
}
