//! Request extractors that fail with the API's own JSON errors instead of axum's
//! plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body. Unlike `axum::Json` it ignores `Content-Type` (so that
/// `curl -d '{…}'`, which sends a form content type, just works), answers 413 past
/// the body limit and 400 with serde's explanation for malformed or mistyped JSON.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        ApiError::PayloadTooLarge("request body is larger than the limit".into())
                    }
                    _ => ApiError::BadRequest(format!(
                        "cannot read request body: {}",
                        rejection.body_text()
                    )),
                })?;
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}")))
    }
}

/// The key captured from `/data/{*key}`, percent-decoded. Never interpreted as a path.
#[derive(Debug)]
pub struct KeyPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::BadRequest(format!("invalid key in path: {}", rejection.body_text()))
            })?;
        Ok(KeyPath(key))
    }
}
