//! A real local HTTP server standing in for a customer's webhook endpoint: it records every
//! request and answers as its plan says.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// How the endpoint answers deliveries (verification challenges are answered correctly
/// unless `fail_verification` is set).
#[derive(Debug, Clone)]
pub enum Plan {
    /// 200 to everything.
    Ok,
    /// This status to everything, with an optional Retry-After.
    Status(u16, Option<u64>),
    /// These statuses in turn, then 200.
    Sequence(VecDeque<u16>),
    /// Never answers (until the sender gives up).
    Hang,
    /// `307 Temporary Redirect` to this URL.
    Redirect(String),
    /// 200 with this body.
    Body(String),
    /// 200 after this long (a slow endpoint: attempts stay in flight meanwhile).
    Delay(Duration),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    pub fn is_verification(&self) -> bool {
        self.json()["type"] == "webhook.verification"
    }
}

#[derive(Default)]
struct Inner {
    plan: Option<Plan>,
    fail_verification: bool,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    };
    let verification = received.is_verification();
    let challenge = received.json()["challenge"].as_str().map(str::to_string);
    let (plan, fail_verification) = {
        let mut inner = inner.lock().unwrap();
        inner.received.push(received);
        let plan = match &mut inner.plan {
            Some(Plan::Sequence(q)) if !verification => match q.pop_front() {
                Some(s) => Plan::Status(s, None),
                None => Plan::Ok,
            },
            Some(p) => p.clone(),
            None => Plan::Ok,
        };
        (plan, inner.fail_verification)
    };
    if verification {
        return if fail_verification {
            (StatusCode::OK, "no challenge here").into_response()
        } else {
            (
                StatusCode::OK,
                serde_json::json!({ "challenge": challenge }).to_string(),
            )
                .into_response()
        };
    }
    match plan {
        Plan::Ok | Plan::Sequence(_) => (StatusCode::OK, "thanks").into_response(),
        Plan::Status(s, retry_after) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = (status, "planned answer").into_response();
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            r
        }
        Plan::Redirect(to) => {
            let mut r = (StatusCode::TEMPORARY_REDIRECT, "moved").into_response();
            r.headers_mut().insert("location", to.parse().unwrap());
            r
        }
        Plan::Body(body) => (StatusCode::OK, body).into_response(),
        Plan::Delay(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "thanks, eventually").into_response()
        }
        Plan::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            (StatusCode::OK, "late").into_response()
        }
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            inner,
        }
    }

    pub fn set_plan(&self, plan: Plan) {
        self.inner.lock().unwrap().plan = Some(plan);
    }

    pub fn fail_verification(&self, fail: bool) {
        self.inner.lock().unwrap().fail_verification = fail;
    }

    /// Deliveries received so far (verification challenges left out).
    pub fn deliveries(&self) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| !r.is_verification())
            .cloned()
            .collect()
    }

    /// Waits (bounded) until `n` deliveries have arrived; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.deliveries();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
