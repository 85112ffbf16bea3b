//! Request limits both node kinds put in front of their routes, so that a client —
//! or anything that reaches an internal port — cannot make a node wait or hold
//! memory for what it merely claims it will send.
//!
//! - [`refuse_declared_oversize`]: 413 from the `Content-Length` header alone, before
//!   any of the body is read. hyper sends `100 Continue` only once a handler reads
//!   the body, so a client that announced too much is answered at once, and one that
//!   waits for `100 Continue` never gets it. A body without a length is cut off at
//!   the same limit while it is read (axum's `DefaultBodyLimit`).
//! - [`deadline`]: 408 when a request (reading its body included) takes longer than
//!   a deadline, so a client that sends a body slowly, or not at all, holds a
//!   connection for a bounded time.
//!
//! Both answer the JSON error shape `{"error": …}` every route uses; [`apply`] puts
//! them, with axum's body limit, in front of a router.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

/// `router` behind the limits: bodies over `max_body_bytes` refused (declared or as
/// read), and each request bounded by `deadline`.
pub fn apply<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    max_body_bytes: usize,
    deadline: Duration,
) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(deadline, self::deadline))
        .layer(middleware::from_fn_with_state(
            max_body_bytes,
            refuse_declared_oversize,
        ))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The declared length of `request`'s body, if it declares one.
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Middleware: 413 for a request whose `Content-Length` is over `limit` bytes.
pub async fn refuse_declared_oversize(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    match declared_length(&request) {
        Some(length) if length > limit as u64 => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {length} bytes is over the {limit}-byte limit"),
        ),
        _ => next.run(request).await,
    }
}

/// Middleware: 408 when the request is not answered within `limit`.
pub async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request was not complete within {limit:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, Bytes};
    use axum::routing::put;
    use axum::Router;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route(
                "/",
                put(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_secs(2),
                deadline,
            ))
            .layer(axum::middleware::from_fn_with_state(
                1000usize,
                refuse_declared_oversize,
            ))
    }

    fn put_request(body: Body, length: Option<&str>) -> Request {
        let mut builder = Request::builder().method("PUT").uri("/");
        if let Some(length) = length {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        builder.body(body).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_oversize_is_refused_without_reading_and_a_stalled_body_times_out() {
        // A body that never comes: only the header can be answered.
        let never =
            || Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let refused = app()
            .oneshot(put_request(never(), Some("99999999999")))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let stalled = app()
            .oneshot(put_request(never(), Some("10")))
            .await
            .unwrap();
        assert_eq!(stalled.status(), StatusCode::REQUEST_TIMEOUT);
        let fine = app()
            .oneshot(put_request(Body::from("hello"), Some("5")))
            .await
            .unwrap();
        assert_eq!(fine.status(), StatusCode::OK);
    }
}
