//! The IVS Real-Time control-plane API over HTTP, exactly as AWS clients speak it:
//! `rest-json`, SigV4-signed, validated against the service model.
//!
//! A request goes through, in order: the response-headers layer (CORS preflight,
//! the seven IVS headers, a request id) → body limit → SigV4 verification →
//! operation routing → JSON parsing → validation against the model's input shape →
//! the operation's handler → the domain's [`ControlPlane`]. Every failure on that
//! path becomes an [`ApiError`], turned into an AWS error response in one place.

pub mod error;
mod handlers;
pub mod headers;
pub mod join;
pub mod model;
pub mod pagination;
pub mod participants;
pub mod server;
pub mod sigv4;
pub mod trace;
mod wire;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Limited};
use onstage_stage::{Account, ControlPlane};
use percent_encoding::percent_decode_str;
use serde_json::Value;

pub use error::{ApiError, ErrorKind};
pub use participants::participant_router;
pub use sigv4::{AccessKey, Credentials};

use pagination::PageTokens;

/// Largest request body accepted (the biggest legitimate one, a CreateStage with
/// twelve token configurations and full attributes, is far below this).
pub const MAX_BODY_BYTES: usize = 1 << 20;

const PAGE_TOKEN_SECRET: &str = "pagination-token-key";

/// A body up to this size is read for any request whose headers passed
/// authentication; larger ones draw on [`UNVERIFIED_BODY_BUDGET`].
const SMALL_BODY_BYTES: usize = 64 * 1024;
/// Most bytes of large bodies held at once, all requests together, before their
/// signatures are verified. Key ids are not secret, so a forged signature under a
/// real one passes the header checks; this bounds what such requests can hold.
const UNVERIFIED_BODY_BUDGET: usize = 8 << 20;

/// Everything a request handler needs.
pub struct ApiState {
    pub control: Arc<ControlPlane>,
    pub credentials: Credentials,
    pub region: String,
    page_tokens: PageTokens,
    /// Kilobytes of [`UNVERIFIED_BODY_BUDGET`] not in use.
    body_budget: Arc<tokio::sync::Semaphore>,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl ApiState {
    /// `metrics` renders the Prometheus exposition for `/metrics`, when enabled.
    pub async fn new(
        control: Arc<ControlPlane>,
        credentials: Credentials,
        region: String,
        metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    ) -> Result<Self, ApiError> {
        let candidate: [u8; 32] = rand::random();
        let key = control
            .store()
            .secret(PAGE_TOKEN_SECRET, &candidate)
            .await
            .map_err(|e| ApiError::from(onstage_stage::DomainError::from(e)))?;
        model::warm_up();
        Ok(ApiState {
            control,
            credentials,
            region,
            page_tokens: PageTokens::new(key),
            body_budget: Arc::new(tokio::sync::Semaphore::new(UNVERIFIED_BODY_BUDGET / 1024)),
            metrics,
        })
    }
}

/// The HTTP API: IVS operations, tagging, the JWKS, health and metrics. Other
/// routers (the media plane's WHIP and events endpoints) can be merged into it.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .fallback(api_call)
        .with_state(state)
        .layer(headers::cors(&[]))
        .layer(axum::middleware::from_fn_with_state(
            headers::ResponseHeaders::ivs(),
            headers::response_headers,
        ))
}

async fn jwks(State(state): State<Arc<ApiState>>) -> Response {
    axum::Json(state.control.jwks()).into_response()
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    match &state.metrics {
        Some(render) => render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are disabled\n").into_response(),
    }
}

/// Every IVS operation arrives here.
async fn api_call(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let started = Instant::now();
    let (operation, result) = match handle(&state, request).await {
        Ok((op, body)) => (op, Ok(body)),
        Err((op, e)) => (op, Err(e)),
    };
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.kind.status(),
    };
    metrics::counter!("onstage_api_requests_total", "operation" => operation, "status" => status.as_str().to_owned())
        .increment(1);
    metrics::histogram!("onstage_api_request_duration_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => {
            if e.kind == ErrorKind::InternalServer {
                tracing::error!(operation, error = %e, "request failed");
            } else {
                tracing::debug!(operation, error = %e, "request refused");
            }
            e.into_response()
        }
    }
}

type Outcome = Result<(&'static str, Value), (&'static str, ApiError)>;

async fn handle(state: &ApiState, request: Request) -> Outcome {
    let (parts, body) = request.into_parts();
    let head = sigv4::RequestHead {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query(),
        headers: &parts.headers,
    };
    // Everything the headers can decide is decided before a byte of the body is
    // read: an unsigned or badly signed request costs the server no body.
    let pending = sigv4::check_head(
        &head,
        &state.credentials,
        &state.region,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|e| ("unauthenticated", e))?;
    let budget = large_body_share(state, &parts.headers).map_err(|e| ("unknown", e))?;
    let body = read_body(&parts.headers, body)
        .await
        .map_err(|e| ("unknown", e))?;
    let caller = pending
        .verify(&head, &body)
        .map_err(|e| ("unauthenticated", e))?;
    drop(budget);
    let account = Account {
        id: caller.account_id,
        region: state.region.clone(),
    };

    let (name, doc) = request_document(&parts.method, parts.uri.path(), parts.uri.query(), &body)?;
    let reply = handlers::dispatch(state, &account, name, doc)
        .await
        .map_err(|e| (name, e))?;
    Ok((name, reply))
}

/// The operation a request names and its validated request document (steps 3
/// and 4 of the path of an API call): pure, no I/O, for any bytes a client sends.
/// The error is tagged with the operation's name when one was found.
pub fn request_document(
    method: &Method,
    raw_path: &str,
    raw_query: Option<&str>,
    body: &[u8],
) -> Result<(&'static str, Value), (&'static str, ApiError)> {
    let (operation, mut doc) =
        route(method, raw_path, raw_query, body).map_err(|e| ("unknown", e))?;
    let name = operation.name;
    if let Some(input) = operation.input {
        model::validate(input, &doc).map_err(|invalid| (name, invalid_request(invalid)))?;
    }
    if let Value::Object(m) = &mut doc {
        // Treat explicit nulls as absent, as the validator did.
        m.retain(|_, v| !v.is_null());
    }
    Ok((name, doc))
}

fn invalid_request(invalid: model::Invalid) -> ApiError {
    match invalid {
        model::Invalid::Type(m) => ApiError::new(ErrorKind::Serialization, m),
        model::Invalid::Constraints(errors) => {
            let n = errors.len();
            let plural = if n == 1 { "" } else { "s" };
            ApiError::new(
                ErrorKind::Validation,
                format!(
                    "{n} validation error{plural} detected: {}",
                    errors.join("; ")
                ),
            )
        }
    }
}

/// A large (or undeclared) body takes its share of the budget for unverified
/// bodies before it is read, and is refused at once when the budget is spent:
/// `503 ServiceUnavailableException`, which SDKs retry. Small bodies need none.
fn large_body_share(
    state: &ApiState,
    headers: &http::HeaderMap,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = match declared {
        Some(n) if n <= SMALL_BODY_BYTES as u64 => return Ok(None),
        Some(n) => n.min(MAX_BODY_BYTES as u64) as usize,
        None => MAX_BODY_BYTES,
    };
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    match state.body_budget.clone().try_acquire_many_owned(kib) {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => {
            metrics::counter!("onstage_api_body_budget_exhausted_total").increment(1);
            Err(ApiError::new(
                ErrorKind::ServiceUnavailable,
                "too many large request bodies in progress; retry shortly",
            ))
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

/// Reads the body, at most [`MAX_BODY_BYTES`]; a declared `Content-Length` over the
/// limit is refused before reading. The server's body deadline
/// ([`server::HttpLimits::body_deadline`]) ends a body that arrives too slowly.
async fn read_body(headers: &http::HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) if server::is_deadline_error(e.as_ref()) => Err(ApiError::new(
            ErrorKind::RequestTimeout,
            "the request body did not arrive in time",
        )),
        Err(e) => Err(ApiError::new(
            ErrorKind::Serialization,
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Finds the operation for a method and path, and builds its request document:
/// the JSON body (empty means `{}`, as paws sends it) plus members bound to the
/// path and the query string.
fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<(&'static model::Operation, Value), ApiError> {
    let unknown = || {
        ApiError::new(
            ErrorKind::UnknownOperation,
            format!("no operation at {method} {path}"),
        )
    };
    let (name, resource_arn) = if let Some(encoded_arn) = path.strip_prefix("/tags/") {
        let name = match *method {
            Method::POST => "TagResource",
            Method::GET => "ListTagsForResource",
            Method::DELETE => "UntagResource",
            _ => return Err(unknown()),
        };
        let arn = percent_decode_str(encoded_arn)
            .decode_utf8()
            .map_err(|_| unknown())?;
        (name, Some(arn.into_owned()))
    } else if *method == Method::POST {
        (path.trim_start_matches('/'), None)
    } else {
        return Err(unknown());
    };
    let operation = model::operation(name)
        .filter(|o| o.method == method.as_str())
        .ok_or_else(unknown)?;

    let mut doc = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::new(
                ErrorKind::Serialization,
                format!("the request body is not valid JSON: {e}"),
            )
        })?
    };
    let Value::Object(members) = &mut doc else {
        return Err(ApiError::new(
            ErrorKind::Serialization,
            "the request body must be a JSON object",
        ));
    };
    if let Some(arn) = resource_arn {
        members.insert("resourceArn".into(), Value::String(arn));
    }
    if name == "UntagResource" {
        let mut keys = Vec::new();
        for (k, v) in sigv4::query_pairs(query.unwrap_or("")) {
            if k == b"tagKeys" {
                let key = String::from_utf8(v).map_err(|_| {
                    ApiError::new(
                        ErrorKind::Validation,
                        "tagKeys: a tag key in the query is not UTF-8",
                    )
                })?;
                keys.push(Value::String(key));
            }
        }
        members.insert("tagKeys".into(), Value::Array(keys));
    }
    Ok((operation, doc))
}
