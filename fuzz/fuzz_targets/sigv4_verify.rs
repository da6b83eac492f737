//! The SigV4 verifier on arbitrary requests: the input is split at newlines into a
//! method, a path, a query, an `Authorization`, an `X-Amz-Date`, further
//! `name: value` headers, and the rest is the body. Nothing may panic.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use onstage_api::sigv4::{self, SignedRequest};
use onstage_api::{AccessKey, Credentials};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(8, '\n');
    let method = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("");
    let query = lines.next();
    let mut headers = HeaderMap::new();
    for name in ["authorization", "x-amz-date"] {
        if let Some(v) = lines.next().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    for line in lines.next().unwrap_or("").split(';') {
        if let Some((n, v)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v))
        {
            headers.append(n, v);
        }
    }
    let body = lines.next().unwrap_or("").as_bytes();
    let mut credentials = Credentials::new();
    credentials.insert(
        "AKIDFUZZ",
        AccessKey {
            secret: "fuzz-secret".into(),
            account_id: "000000000000".into(),
        },
    );
    let _ = sigv4::verify(
        &SignedRequest {
            method,
            raw_path: path,
            raw_query: query,
            headers: &headers,
            body,
        },
        &credentials,
        "us-east-1",
        time::OffsetDateTime::now_utc(),
    );
});
