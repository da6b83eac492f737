//! Headers every response carries, and the CORS preflight answer. Applied as one
//! layer around the whole router, so errors and authentication failures carry them
//! exactly like successes.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use rand::Rng;

/// The seven headers IVS sends on every response, with IVS's values (the odd
/// `max-age:` included).
pub const SECURITY_HEADERS: [(&str, &str); 7] = [
    ("access-control-allow-origin", "*"),
    (
        "access-control-expose-headers",
        "Access-Control-Allow-Origin,Access-Control-Expose-Headers,Cache-Control,Content-Length,Content-Security-Policy,Content-Type,Date,Location,Strict-Transport-Security,X-Amzn-ErrorType,X-Amzn-RequestId,X-Content-Type-Options,X-Frame-Options",
    ),
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

/// The one list of request headers a preflight allows: those the AWS SDKs and WHIP
/// clients send. A client that sends another header cross-origin needs it here.
pub const ALLOWED_HEADERS: &str = "Authorization,Content-Type,X-Amz-Date,X-Amz-User-Agent,X-Amz-Content-Sha256,X-Amz-Security-Token,X-Amz-Target,Amz-Sdk-Invocation-Id,Amz-Sdk-Request,If-Match";

/// Answers CORS preflights without authentication, and stamps the security headers
/// and a request id on every response.
pub async fn response_headers(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        preflight()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if !headers.contains_key("x-amzn-requestid") {
        let id: u128 = rand::rng().random();
        if let Ok(v) = HeaderValue::from_str(&format!("{:032x}", id)) {
            headers.insert(HeaderName::from_static("x-amzn-requestid"), v);
        }
    }
    response
}

fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, DELETE, PATCH, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    r
}
