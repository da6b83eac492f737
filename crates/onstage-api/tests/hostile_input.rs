//! Property tests with hostile input, run by `cargo test` with a bounded number of
//! cases: the SigV4 verifier never panics on anything a client sends and never
//! accepts a request altered after signing; the API answers arbitrary paths and
//! bodies with an AWS error shape, never a panic or a 500.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use onstage_api::sigv4::{self, SignedRequest};
use onstage_api::{AccessKey, ApiState, Credentials};
use onstage_stage::{ControlPlane, ControlPlaneConfig};
use onstage_store::SqliteStore;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;
use tower::ServiceExt;

const KEY_ID: &str = "AKIDPROP";
const SECRET: &str = "prop-secret";
const HOST: &str = "127.0.0.1:7700";

fn credentials() -> Credentials {
    let mut c = Credentials::new();
    c.insert(
        KEY_ID,
        AccessKey {
            secret: SECRET.into(),
            account_id: "000000000000".into(),
        },
    );
    c
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A request as the AWS SDKs sign it, for `method path?query` with `body`.
fn aws_signed(method: &str, path_and_query: &str, body: &[u8], at: SystemTime) -> Request<Vec<u8>> {
    let identity = AwsCredentials::new(KEY_ID, SECRET, None, None, "prop").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ivs")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{HOST}{path_and_query}"))
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .expect("request");
    let signable = SignableRequest::new(
        method,
        req.uri().to_string(),
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii header"))),
        SignableBody::Bytes(body),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signature").into_parts();
    instructions.apply_to_request_http1x(&mut req);
    req
}

fn check(req: &Request<Vec<u8>>, now: SystemTime) -> Result<sigv4::Caller, onstage_api::ApiError> {
    sigv4::verify(
        &SignedRequest {
            method: req.method().as_str(),
            raw_path: req.uri().path(),
            raw_query: req.uri().query(),
            headers: req.headers(),
            body: req.body(),
        },
        &credentials(),
        "us-east-1",
        now.into(),
    )
}

fn encoded(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// What may be altered after signing, each a change of meaning.
#[derive(Clone, Debug)]
enum Alteration {
    AppendToBody(u8),
    ReplaceBody(Vec<u8>),
    Method,
    AppendToPath(char),
    AddQueryPair(String, String),
    ChangeQueryValue(String),
    ContentType(String),
    Host(u16),
    DropQuery,
}

fn alteration() -> impl Strategy<Value = Alteration> {
    prop_oneof![
        any::<u8>().prop_map(Alteration::AppendToBody),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Alteration::ReplaceBody),
        Just(Alteration::Method),
        proptest::char::range('a', 'z').prop_map(Alteration::AppendToPath),
        ("[a-zA-Z0-9 +&=%]{1,8}", "[a-zA-Z0-9 +&=%]{0,8}")
            .prop_map(|(k, v)| Alteration::AddQueryPair(k, v)),
        "[a-zA-Z0-9 +]{1,8}".prop_map(Alteration::ChangeQueryValue),
        "[a-z/+.-]{1,20}".prop_map(Alteration::ContentType),
        (1u16..65535).prop_map(Alteration::Host),
        Just(Alteration::DropQuery),
    ]
}

fn alter(req: &mut Request<Vec<u8>>, how: &Alteration) -> bool {
    let uri = req.uri().clone();
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    let set_uri = |req: &mut Request<Vec<u8>>, pq: String| {
        *req.uri_mut() = format!("http://{HOST}{pq}").parse().expect("uri");
    };
    match how {
        Alteration::AppendToBody(b) => req.body_mut().push(*b),
        Alteration::ReplaceBody(b) => {
            if b == req.body() {
                return false;
            }
            *req.body_mut() = b.clone();
        }
        Alteration::Method => {
            *req.method_mut() = if req.method() == http::Method::POST {
                http::Method::DELETE
            } else {
                http::Method::POST
            }
        }
        Alteration::AppendToPath(c) => set_uri(
            req,
            format!(
                "{path}{c}{}",
                query.map(|q| format!("?{q}")).unwrap_or_default()
            ),
        ),
        Alteration::AddQueryPair(k, v) => {
            let pair = format!("{}={}", encoded(k), encoded(v));
            let q = match query {
                Some(q) if !q.is_empty() => format!("{q}&{pair}"),
                _ => pair,
            };
            set_uri(req, format!("{path}?{q}"));
        }
        Alteration::ChangeQueryValue(v) => {
            let Some(q) = query.filter(|q| !q.is_empty()) else {
                return false;
            };
            let (first, rest) = q.split_once('&').unwrap_or((&q, ""));
            let (k, old) = first.split_once('=').unwrap_or((first, ""));
            let new = encoded(v);
            if new == old
                || percent_encoding::percent_decode_str(old).collect::<Vec<u8>>() == v.as_bytes()
            {
                return false;
            }
            let rest = if rest.is_empty() {
                String::new()
            } else {
                format!("&{rest}")
            };
            set_uri(req, format!("{path}?{k}={new}{rest}"));
        }
        Alteration::ContentType(t) => {
            if t == "application/json" {
                return false;
            }
            let Ok(v) = HeaderValue::from_str(t) else {
                return false;
            };
            req.headers_mut().insert("content-type", v);
        }
        Alteration::Host(port) => {
            if *port == 7700 {
                return false;
            }
            let Ok(v) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) else {
                return false;
            };
            req.headers_mut().insert("host", v);
        }
        Alteration::DropQuery => {
            if query.as_deref().unwrap_or("").is_empty() {
                return false;
            }
            set_uri(req, path);
        }
    }
    true
}

fn path_segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:_./ -]{1,24}".prop_map(|s| encoded(&s))
}

fn query_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[a-zA-Z0-9 +=&%]{1,8}", "[a-zA-Z0-9 +=&%]{0,8}"), 0..4)
}

proptest! {
    #![proptest_config(config(256))]

    /// Whatever arrives — method, path, query, header names and values, body —
    /// the verifier answers with a result, never a panic.
    #[test]
    fn the_verifier_never_panics(
        method in "[A-Z]{0,8}",
        path in ".{0,40}",
        query in proptest::option::of(".{0,40}"),
        headers in proptest::collection::vec(("[a-z-]{1,16}", "[ -~]{0,80}"), 0..6),
        authorization in proptest::option::of(prop_oneof![
            "[ -~]{0,120}",
            ("[A-Za-z0-9]{0,10}", "[0-9]{0,9}", "[a-z0-9-]{0,12}", "[a-z]{0,5}", "[a-z;-]{0,40}", "[0-9a-f]{0,64}")
                .prop_map(|(k, d, r, s, h, sig)| format!(
                    "AWS4-HMAC-SHA256 Credential={k}/{d}/{r}/{s}/aws4_request, SignedHeaders={h}, Signature={sig}")),
        ]),
        amz_date in proptest::option::of("[0-9TZ]{0,18}"),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                map.append(n, v);
            }
        }
        if let Some(a) = authorization.and_then(|a| HeaderValue::from_str(&a).ok()) {
            map.insert("authorization", a);
        }
        if let Some(d) = amz_date.and_then(|d| HeaderValue::from_str(&d).ok()) {
            map.insert("x-amz-date", d);
        }
        let _ = sigv4::verify(
            &SignedRequest {
                method: &method,
                raw_path: &path,
                raw_query: query.as_deref(),
                headers: &map,
                body: &body,
            },
            &credentials(),
            "us-east-1",
            time::OffsetDateTime::now_utc(),
        );
    }

    /// What AWS's own signer signs is accepted; the same request altered in any
    /// way that changes its meaning is refused.
    #[test]
    fn an_altered_request_is_never_accepted(
        post in any::<bool>(),
        segments in proptest::collection::vec(path_segment(), 1..3),
        pairs in query_pairs(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        how in alteration(),
    ) {
        let method = if post { "POST" } else { "DELETE" };
        let path = format!("/{}", segments.join("/"));
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", encoded(k), encoded(v))).collect();
        let pq = if query.is_empty() { path.clone() } else { format!("{path}?{}", query.join("&")) };
        let now = SystemTime::now();
        let mut req = aws_signed(method, &pq, &body, now);
        prop_assert!(check(&req, now).is_ok(), "AWS's signer was refused for {pq}: {:?}", check(&req, now).err());
        if alter(&mut req, &how) {
            prop_assert!(check(&req, now).is_err(), "accepted after {how:?}: {} {}", req.method(), req.uri());
        }
    }
}

// ----- the API as a whole: arbitrary paths and bodies ------------------------------

/// One runtime and one router serve every case: opening a store (and running its
/// migrations) for each case was most of this test's time, and a router that has
/// already answered earlier cases is no easier a target than a fresh one.
fn shared_api() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static API: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let app = runtime.block_on(api());
        (runtime, app)
    })
}

async fn api() -> axum::Router {
    let store = SqliteStore::open_in_memory().await.expect("store");
    let control = ControlPlane::open(
        Arc::new(store),
        ControlPlaneConfig {
            whip_url: format!("http://{HOST}/whip"),
            events_url: format!("ws://{HOST}/events"),
            rtmp_url: None,
            rtmps_url: None,
        },
    )
    .await
    .expect("control plane");
    let state = ApiState::new(Arc::new(control), credentials(), "us-east-1".into(), None)
        .await
        .expect("state");
    onstage_api::router(Arc::new(state))
}

const AWS_ERRORS: [&str; 11] = [
    "ValidationException",
    "SerializationException",
    "ResourceNotFoundException",
    "UnknownOperationException",
    "ConflictException",
    "ServiceQuotaExceededException",
    "NotImplementedException",
    "RequestEntityTooLargeException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "MissingAuthenticationTokenException",
];

fn operation_or_junk() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "/CreateStage",
            "/GetStage",
            "/UpdateStage",
            "/DeleteStage",
            "/ListStages",
            "/CreateParticipantToken",
            "/ImportPublicKey",
            "/GetPublicKey",
            "/ListPublicKeys",
            "/DisconnectParticipant",
            "/ListStageSessions",
            "/GetStageSession",
            "/ListParticipants",
            "/GetParticipant",
            "/ListParticipantEvents",
            "/CreateStorageConfiguration",
            "/CreateEncoderConfiguration",
            "/StartParticipantReplication",
            "/ListParticipantReplicas",
            "/StartComposition",
            "/tags/arn%3Aaws%3Aivs%3Aus-east-1%3A000000000000%3Astage%2Fabcdefabcdef",
        ])
        .prop_map(str::to_owned),
        "/[a-zA-Z]{0,20}",
        ("/tags/", "[a-zA-Z0-9:/%_-]{0,40}").prop_map(|(a, b)| format!("{a}{}", encoded(&b))),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,20}".prop_map(Value::String),
        "arn:aws:ivs:us-east-1:000000000000:[a-z-]{1,12}/[a-zA-Z0-9]{0,14}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    proptest::sample::select(vec![
                        "name",
                        "arn",
                        "stageArn",
                        "duration",
                        "capabilities",
                        "userId",
                        "attributes",
                        "participantTokenConfigurations",
                        "tags",
                        "maxResults",
                        "nextToken",
                        "publicKeyMaterial",
                        "sessionId",
                        "participantId",
                        "filterByState",
                        "sourceStageArn",
                        "destinationStageArn",
                        "reconnectWindowSeconds",
                        "video",
                        "s3",
                        "autoParticipantRecordingConfiguration",
                        "tagKeys",
                        "reason",
                    ])
                    .prop_map(str::to_owned),
                    "[a-zA-Z]{1,10}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(config(200))]

    /// A signed request to any path with any body gets an AWS-shaped answer: `200`
    /// with JSON, or a 4xx/501 with `x-amzn-ErrorType` and both messages — never a
    /// panic, never a 500.
    #[test]
    fn any_path_and_body_get_an_aws_answer(
        method in proptest::sample::select(vec!["POST", "GET", "DELETE", "PUT"]),
        path in operation_or_junk(),
        query in proptest::option::of(query_pairs()),
        body in body(),
    ) {
        let (runtime, app) = shared_api();
        runtime.block_on(async {
            let app = app.clone();
            let pq = match &query {
                Some(pairs) if !pairs.is_empty() => format!("{path}?{}", pairs.iter()
                    .map(|(k, v)| format!("{}={}", encoded(k), encoded(v))).collect::<Vec<_>>().join("&")),
                _ => path.clone(),
            };
            let signed = aws_signed(method, &pq, &body, SystemTime::now());
            let (parts, body) = signed.into_parts();
            let response = app
                .oneshot(Request::from_parts(parts, Body::from(body)))
                .await
                .expect("the router is infallible");
            let status = response.status();
            let kind = response.headers().get("x-amzn-errortype").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
                .await
                .expect("body in time")
                .expect("body")
                .to_bytes();
            prop_assert!(status != http::StatusCode::INTERNAL_SERVER_ERROR, "500 for {method} {pq}: {bytes:?}");
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("not JSON ({e}) for {method} {pq}: {bytes:?}")))?;
            if status.is_success() {
                prop_assert!(json.is_object());
            } else {
                let kind = kind.ok_or_else(|| TestCaseError::fail(format!("{status} without x-amzn-ErrorType")))?;
                prop_assert!(AWS_ERRORS.contains(&kind.as_str()), "unexpected error type {kind}");
                prop_assert!(json["message"].is_string() && json["message"] == json["exceptionMessage"]);
            }
            Ok(())
        })?;
    }
}
