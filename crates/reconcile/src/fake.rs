//! A scripted API server for request-level reconciler tests (feature `testing`), in the
//! manner of kube-rs' controller examples: the test drives a reconcile against a
//! [`kube::Client`] whose transport is this fake, receives each request the reconcile makes,
//! checks it, and answers it.
//!
//! ```ignore
//! let (client, mut api) = fake::pair();
//! let task = tokio::spawn(reconcile(obj, ctx_with(client)));
//! let req = api.next().await;
//! assert_eq!(req.line(), "POST /api/v1/namespaces/default/pods");
//! req.respond(201, &req.body());
//! api.done(task).await; // the reconcile finished and made no further request
//! ```

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The test's side of the fake API server.
pub struct FakeApi {
    handle: Handle,
}

/// A client for the code under test and the fake server it talks to.
pub fn pair() -> (Client, FakeApi) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), FakeApi { handle })
}

/// One request the code under test made, waiting for an answer.
pub struct Exchange {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub content_type: String,
    body: Vec<u8>,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Exchange {
    /// `METHOD /path`, for one-line assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The request body as JSON (`null` when empty).
    pub fn body(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Answers with `code` and a JSON body.
    pub fn respond(self, code: u16, body: &Value) {
        let resp = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::to_vec(body).expect("JSON serialises"),
            ))
            .expect("valid response");
        self.respond.send_response(resp);
    }

    /// Answers with a Kubernetes `Status` failure.
    pub fn fail(self, code: u16, reason: &str, message: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code,
        });
        self.respond(code, &status);
    }

    /// Answers a write by echoing its body back (what an API server returns, give or take
    /// the fields it fills in).
    pub fn echo(self, code: u16) {
        let body = self.body();
        self.respond(code, &body);
    }
}

impl FakeApi {
    /// The next request (panics after 10 s without one).
    pub async fn next(&mut self) -> Exchange {
        let (req, respond) =
            tokio::time::timeout(Duration::from_secs(10), self.handle.next_request())
                .await
                .expect("no request from the code under test within 10 s")
                .expect("the client under test was dropped");
        let (parts, body) = req.into_parts();
        let body = body
            .collect_bytes()
            .await
            .expect("reading the request body")
            .to_vec();
        Exchange {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body,
            respond,
        }
    }

    /// Waits for the code under test to finish and checks it made no request it was not
    /// answered for. Returns the task's output.
    pub async fn done<T>(mut self, task: tokio::task::JoinHandle<T>) -> T {
        let out = tokio::select! {
            // The finished task drops its client, which ends the request stream too.
            biased;
            out = task => out.expect("the code under test panicked"),
            extra = self.handle.next_request() => match extra {
                Some((req, _)) => panic!("unexpected request: {} {}", req.method(), req.uri()),
                None => panic!("the client under test was dropped before it finished"),
            },
        };
        out
    }
}
