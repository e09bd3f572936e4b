//! `kubectl logs` of a launcher pod: `GET /api/v1/namespaces/{ns}/pods/{name}/log` served
//! from the launcher's log in its run directory, as a kubelet serves a container's log
//! (`container`, `tailLines`, `limitBytes`, `follow`; `previous` has nothing: pods here never
//! restart). Errors carry kube-apiserver's wording.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kubevirt_api::launcher_pod::launcher_pod_vmi;
use kubevirt_api::v1::well_known::COMPUTE_CONTAINER;
use kubevirt_launcher::RunDir;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::subresources::{ApiError, SubresourceState};

/// The router for pod logs (merged into the API server behind authentication).
pub fn router(state: Arc<SubresourceState>) -> Router {
    Router::new()
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        .with_state(state)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

async fn pod_log(
    State(state): State<Arc<SubresourceState>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let pods: Api<Pod> = Api::namespaced(state.client()?, &ns);
    let pod = pods
        .get_opt(&name)
        .await
        .map_err(ApiError::from_kube)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods \"{name}\" not found"),
            )
        })?;
    if let Some(c) = q
        .get("container")
        .filter(|c| !c.is_empty() && *c != COMPUTE_CONTAINER)
    {
        return Err(bad_request(format!(
            "container {c} is not valid for pod {name}"
        )));
    }
    if q.get("previous").is_some_and(|p| p == "true") {
        return Err(bad_request(format!(
            "previous terminated container \"{COMPUTE_CONTAINER}\" in pod \"{name}\" not found"
        )));
    }
    if launcher_pod_vmi(&pod).is_none() {
        return Err(bad_request(format!(
            "container \"{COMPUTE_CONTAINER}\" in pod \"{name}\" is not running: the pod was rejected by the node"
        )));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let launchers = state.launchers()?;
    let launcher = launchers.get(&uid);
    let run_dir = launcher
        .as_ref()
        .map(|l| l.run_dir.clone())
        .unwrap_or_else(|| RunDir::for_uid(&launchers.config.run_root, &uid));
    let path = run_dir.launcher_log();
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return Err(bad_request(format!(
            "container \"{COMPUTE_CONTAINER}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .await
        .map_err(ApiError::internal)?;
    let mut out = match q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => tail_lines(&text, n).to_vec(),
        None => text.clone(),
    };
    if let Some(limit) = q.get("limitBytes").and_then(|l| l.parse::<usize>().ok()) {
        out.truncate(limit);
    }
    let follow = q.get("follow").is_some_and(|f| f == "true");
    let headers = [(header::CONTENT_TYPE, "text/plain")];
    if !follow {
        return Ok((headers, out).into_response());
    }
    // Follow: what is there, then what the launcher appends, until it exits.
    let offset = text.len() as u64;
    let stream = futures::stream::unfold(
        (Some(out), file, launcher, offset),
        |(first, mut file, launcher, mut offset)| async move {
            if let Some(first) = first {
                return Some((
                    Ok::<_, std::io::Error>(first),
                    (None, file, launcher, offset),
                ));
            }
            loop {
                let mut chunk = Vec::new();
                if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                    let _ = (&mut file).take(64 * 1024).read_to_end(&mut chunk).await;
                }
                if !chunk.is_empty() {
                    offset += chunk.len() as u64;
                    return Some((Ok(chunk), (None, file, launcher, offset)));
                }
                if launcher.as_ref().is_none_or(|l| l.exited()) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    Ok((headers, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\n", 0), b"");
    }
}
