//! The optional shared cluster token (`--cluster-token`, `SHARDCACHE_CLUSTER_TOKEN`):
//! aux nodes require it from masters on every internal route, and masters require it
//! on their admin API (`/cluster…`), so that reaching a port is not enough to read or
//! forge shards or change membership. It travels as `Authorization: Bearer TOKEN`;
//! `/health` and `/metrics` stay open for probes and scrapers. It is a shared secret,
//! not encryption: run the internal network where it cannot be sniffed, or put TLS
//! in front.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The token a node requires, if one is set (an empty one counts as none, so
/// `SHARDCACHE_CLUSTER_TOKEN=` from an unset compose variable turns it off).
#[derive(Clone, Debug, Default)]
pub struct ClusterToken(Option<Arc<str>>);

/// `--cluster-token` and `--cluster-token-file`, the same flags on masters and aux
/// nodes (flattened into both configurations).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterTokenArgs {
    /// A shared secret of masters and aux nodes: masters present it
    /// (`Authorization: Bearer …`) on every call to an aux node, and aux nodes'
    /// internal routes and masters' admin API (`/cluster…`) require it; `/data`,
    /// `/health`, `/ready` and `/metrics` stay open. Unset or empty: none.
    #[arg(long, env = "SHARDCACHE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,

    /// Read the cluster token from this file instead (a mounted secret).
    #[arg(long, env = "SHARDCACHE_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<std::path::PathBuf>,
}

impl ClusterTokenArgs {
    /// The token these flags give (see [`ClusterToken::from_flags`]).
    pub fn load(&self) -> Result<ClusterToken, String> {
        ClusterToken::from_flags(
            self.cluster_token.as_deref(),
            self.cluster_token_file.as_deref(),
        )
    }
}

impl ClusterToken {
    pub fn new(token: Option<&str>) -> Self {
        ClusterToken(token.filter(|token| !token.is_empty()).map(Arc::from))
    }

    /// The token of `--cluster-token`, or read from `--cluster-token-file` (a mounted
    /// secret; surrounding whitespace is ignored), or none.
    pub fn from_flags(token: Option<&str>, file: Option<&std::path::Path>) -> Result<Self, String> {
        match (token.filter(|token| !token.is_empty()), file) {
            (Some(_), Some(_)) => {
                Err("give --cluster-token or --cluster-token-file, not both".into())
            }
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| format!("--cluster-token-file {}: {error}", path.display()))?;
                if text.trim().is_empty() {
                    return Err(format!("--cluster-token-file {} is empty", path.display()));
                }
                Ok(Self::new(Some(text.trim())))
            }
            (token, None) => Ok(Self::new(token)),
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The `Authorization` header value that presents it.
    pub fn header_value(&self) -> Option<HeaderValue> {
        let token = self.0.as_deref()?;
        HeaderValue::from_str(&format!("Bearer {token}")).ok()
    }

    /// Whether a request's `Authorization` header presents this token (always
    /// true when none is set). Compares in time independent of where they differ.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = self.0.as_deref() else {
            return true;
        };
        let presented = authorization
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        constant_time_eq(presented, token.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b) {
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

/// Middleware: 401 `{"error": …}` unless the request presents the token.
pub async fn require(State(token): State<ClusterToken>, request: Request, next: Next) -> Response {
    if token.admits(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({
            "error": "missing or wrong cluster token (Authorization: Bearer …, see --cluster-token)"
        })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"shardcache\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_admitted() {
        let token = ClusterToken::new(Some("s3cret"));
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        assert!(token.admits(Some(&header("Bearer s3cret"))));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "bearer s3cret",
            "s3cret",
            "Bearer ",
            "",
        ] {
            assert!(!token.admits(Some(&header(wrong))), "{wrong:?}");
        }
        assert!(!token.admits(None));
        assert_eq!(token.header_value().unwrap(), "Bearer s3cret");
    }

    #[test]
    fn no_token_or_an_empty_one_admits_everyone() {
        for token in [ClusterToken::new(None), ClusterToken::new(Some(""))] {
            assert!(!token.is_set());
            assert!(token.admits(None));
            assert!(token.header_value().is_none());
        }
    }
}
