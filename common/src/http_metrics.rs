//! What masters and aux nodes share about Prometheus metrics: the middleware that
//! counts and times every HTTP request by its *matched route* (never the raw path:
//! keys must not become label values), the latency buckets, and the text
//! exposition of a node's [`Registry`].
//!
//! Each node owns its registry (no process-global recorder), so several nodes can
//! live in one test process.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Latency buckets in seconds, 100 µs to 10 s: a cache answers in well under a
/// millisecond when healthy, and in timeouts (0.5 s by default) when not.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The `route` label of requests that matched no route (404 fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// `<prefix>_http_requests_total` and `<prefix>_http_request_duration_seconds`, both
/// labelled by route, method and status.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates the two families under `prefix` (e.g. `shardcache_master`) in `registry`.
    pub fn register(registrar: &Registrar) -> prometheus::Result<Self> {
        let labels = &["route", "method", "status"];
        Ok(HttpMetrics {
            requests: registrar.counter_vec(
                "http_requests_total",
                "HTTP requests served, by matched route, method and status code.",
                labels,
            )?,
            duration: registrar.histogram_vec(
                "http_request_duration_seconds",
                "Time from request received to response headers sent, by matched route, method and status code.",
                labels,
            )?,
        })
    }
}

/// Creates metrics named `<prefix>_<name>` and registers them in one registry.
pub struct Registrar<'a> {
    pub registry: &'a Registry,
    pub prefix: &'static str,
}

impl Registrar<'_> {
    fn name(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }

    fn register<M: Collector + Clone + 'static>(&self, metric: M) -> prometheus::Result<M> {
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    pub fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::with_opts(Opts::new(self.name(name), help))?)
    }

    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.register(IntCounterVec::new(
            Opts::new(self.name(name), help),
            labels,
        )?)
    }

    pub fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::with_opts(Opts::new(self.name(name), help))?)
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> prometheus::Result<Gauge> {
        self.register(Gauge::with_opts(Opts::new(self.name(name), help))?)
    }

    pub fn float_gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<prometheus::GaugeVec> {
        self.register(prometheus::GaugeVec::new(
            Opts::new(self.name(name), help),
            labels,
        )?)
    }

    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(Opts::new(self.name(name), help), labels)?)
    }

    /// A histogram with the given bucket bounds (seconds).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> prometheus::Result<Histogram> {
        self.register(Histogram::with_opts(
            HistogramOpts::new(self.name(name), help).buckets(buckets.to_vec()),
        )?)
    }

    /// A labelled latency histogram with [`LATENCY_BUCKETS`].
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        self.register(HistogramVec::new(
            HistogramOpts::new(self.name(name), help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )?)
    }

    /// `<prefix>_info{labels} 1`: build and identity facts to join on.
    pub fn info(&self, labels: &[(&str, &str)]) -> prometheus::Result<()> {
        let names: Vec<&str> = labels.iter().map(|(name, _)| *name).collect();
        let values: Vec<&str> = labels.iter().map(|(_, value)| *value).collect();
        let info = self.gauge_vec(
            "info",
            "Always 1; the labels describe this process.",
            &names,
        )?;
        info.with_label_values(&values).set(1);
        Ok(())
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`) that records every request.
/// Add it with `Router::layer` as the outermost layer, so that rejections by inner
/// layers (413, 400) are counted too.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let labels = [
        route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        method,
        status.as_str(),
    ];
    metrics.requests.with_label_values(&labels).inc();
    metrics
        .duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: the standard methods by name, anything else as `other`. Any
/// token is a valid HTTP method, so taking it verbatim would let clients create
/// series without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `registry` in the Prometheus text format, as a `GET /metrics` response.
pub fn exposition(registry: &Registry) -> Response {
    match TextEncoder::new().encode_to_string(&registry.gather()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": format!("cannot encode metrics: {error}") })),
        )
            .into_response(),
    }
}

/// Moves `counter` up to `total`, a monotonic total kept elsewhere (the store's
/// eviction count, say) and copied in at scrape time.
pub fn advance_counter(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// With `--metrics-listen ADDR`: binds ADDR, prints `metrics listening on ADDR` on
/// stdout (so port 0 can be used), and serves `router` (the `/metrics` route alone)
/// there in the background until `shutdown` resolves. Without it, does nothing.
pub async fn serve_metrics_listener(
    addr: Option<SocketAddr>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| format!("cannot listen for metrics on {addr}: {error}"))?;
    let bound = listener
        .local_addr()
        .map_err(|error| format!("cannot read the address bound for {addr}: {error}"))?;
    println!("metrics listening on {bound}");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "metrics listener failed");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn call(app: &Router, path: &str) -> StatusCode {
        call_with(app, Method::GET, path).await
    }

    async fn call_with(app: &Router, method: Method, path: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn requests_are_labelled_by_route_template_never_by_raw_path() {
        let registry = Registry::new();
        let registrar = Registrar {
            registry: &registry,
            prefix: "test",
        };
        let metrics = HttpMetrics::register(&registrar).unwrap();
        let app = Router::new()
            .route("/data/{*key}", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(metrics, track));
        assert_eq!(call(&app, "/data/secret-key-1").await, StatusCode::OK);
        assert_eq!(call(&app, "/data/secret-key-2").await, StatusCode::OK);
        assert_eq!(call(&app, "/nowhere").await, StatusCode::NOT_FOUND);
        for invented in ["AAAB", "AAAC", "BREW"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(
                call_with(&app, method, "/data/k").await,
                StatusCode::METHOD_NOT_ALLOWED
            );
        }

        let text = TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(
                r#"test_http_requests_total{method="GET",route="/data/{*key}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"test_http_requests_total{method="GET",route="unmatched",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"test_http_request_duration_seconds_bucket{method="GET",route="/data/{*key}",status="200",le="10"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"test_http_requests_total{method="other",route="/data/{*key}",status="405"} 3"#
            ),
            "invented methods share one label value: {text}"
        );
        assert!(!text.contains("AAAB"), "a method became a label: {text}");
        assert!(!text.contains("secret-key"), "a key became a label: {text}");
    }
}
