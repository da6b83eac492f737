//! Headers every response carries, and CORS. Applied as layers around whole routers,
//! so errors and authentication failures carry them exactly like successes.
//!
//! CORS preflights are answered by tower-http's [`CorsLayer`] (built by [`cors`]);
//! [`response_headers`], outside it, stamps IVS's seven headers with IVS's exact
//! values on every response, preflights included, and a request id.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue, Method};
use rand::Rng;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The seven headers IVS sends on every response, with IVS's values (the odd
/// `max-age:` included). `access-control-expose-headers` is [`EXPOSED_HEADERS`],
/// which a router may extend ([`ResponseHeaders::exposing`]).
pub const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("access-control-allow-origin", "*"),
    ("cache-control", "no-store, no-cache"),
    (
        "content-security-policy",
        "default-src 'self'; upgrade-insecure-requests;",
    ),
    (
        "strict-transport-security",
        "max-age:47304000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
];

/// IVS's `Access-Control-Expose-Headers`, as IVS writes it.
pub const EXPOSED_HEADERS: &str = "Access-Control-Allow-Origin,Access-Control-Expose-Headers,Cache-Control,Content-Length,Content-Security-Policy,Content-Type,Date,Location,Strict-Transport-Security,X-Amzn-ErrorType,X-Amzn-RequestId,X-Content-Type-Options,X-Frame-Options";

/// The request headers a preflight allows on every router: those the AWS SDKs and
/// WHIP clients send. A client that sends another header cross-origin needs it here
/// (or in the `extra` of its router's [`cors`]).
pub const ALLOWED_HEADERS: [&str; 10] = [
    "authorization",
    "content-type",
    "x-amz-date",
    "x-amz-user-agent",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "x-amz-target",
    "amz-sdk-invocation-id",
    "amz-sdk-request",
    "if-match",
];

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(86_400);

/// The CORS layer of a router: any origin, the methods the API and the participant
/// endpoints use, [`ALLOWED_HEADERS`] plus `extra` request headers. Every `OPTIONS`
/// request is a preflight, answered here without authentication.
pub fn cors(extra: &[&'static str]) -> CorsLayer {
    let headers: Vec<HeaderName> = ALLOWED_HEADERS
        .iter()
        .chain(extra)
        .map(|h| HeaderName::from_static(h))
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ])
        .allow_headers(headers)
        .max_age(PREFLIGHT_MAX_AGE)
}

/// What [`response_headers`] stamps: IVS's seven headers, the expose list possibly
/// extended for a router's own response headers.
#[derive(Clone, Debug)]
pub struct ResponseHeaders {
    exposed: HeaderValue,
}

impl ResponseHeaders {
    /// IVS's headers exactly.
    pub fn ivs() -> Self {
        ResponseHeaders {
            exposed: HeaderValue::from_static(EXPOSED_HEADERS),
        }
    }

    /// IVS's headers, with `extra` (a comma-separated list) appended to the expose list.
    pub fn exposing(extra: &str) -> Self {
        match HeaderValue::from_str(&format!("{EXPOSED_HEADERS},{extra}")) {
            Ok(exposed) => ResponseHeaders { exposed },
            Err(_) => Self::ivs(),
        }
    }
}

/// Stamps IVS's seven headers and a request id on every response.
pub async fn response_headers(
    State(stamp): State<ResponseHeaders>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers.insert(
        http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        stamp.exposed.clone(),
    );
    if !headers.contains_key("x-amzn-requestid") {
        let id: u128 = rand::rng().random();
        if let Ok(v) = HeaderValue::from_str(&format!("{:032x}", id)) {
            headers.insert(HeaderName::from_static("x-amzn-requestid"), v);
        }
    }
    response
}
