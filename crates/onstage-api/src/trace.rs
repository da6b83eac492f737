//! One tracing span per HTTP request, from tower-http's [`TraceLayer`], around the
//! whole application (the API, the participant endpoints and the join page).
//!
//! The span names the method and the path only: a query string or a header can
//! carry a credential (a signature, a participant token), and logs are read by
//! more people than credentials should be. Each response is logged at DEBUG with
//! its status and latency; an answer in the 5xx range also at ERROR.

use axum::body::Body;
use http::Request;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::TraceLayer;
use tracing::Span;

/// How a request's span is made.
type MakeRequestSpan = fn(&Request<Body>) -> Span;

/// The tracing layer of the application.
pub fn layer() -> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, MakeRequestSpan> {
    TraceLayer::new_for_http().make_span_with(request_span as MakeRequestSpan)
}

fn request_span(request: &Request<Body>) -> Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
    )
}
