//! Verification of AWS Signature Version 4, as the AWS SDKs, the AWS CLI and paws
//! sign requests for the `ivs` service.
//!
//! The server recomputes the signature from what it received — method, the path as
//! sent (still percent-encoded, encoded once more as non-S3 signers do), the query,
//! exactly the headers the client signed, and the body — and compares in constant
//! time. Nothing here allocates per header beyond the canonical request itself.

use std::collections::HashMap;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use percent_encoding::{
    AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode, utf8_percent_encode,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

use crate::error::{ApiError, ErrorKind};

type HmacSha256 = Hmac<Sha256>;

/// Largest accepted difference between the request's `x-amz-date` and the clock.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 15 * 60;
pub const SERVICE: &str = "ivs";

/// One configured access key.
#[derive(Clone, Debug)]
pub struct AccessKey {
    pub secret: String,
    pub account_id: String,
}

/// The access keys this deployment accepts, by access key id.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    keys: HashMap<String, AccessKey>,
}

impl Credentials {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, access_key_id: impl Into<String>, key: AccessKey) {
        self.keys.insert(access_key_id.into(), key);
    }
    pub fn get(&self, access_key_id: &str) -> Option<&AccessKey> {
        self.keys.get(access_key_id)
    }
    fn get_key_value(&self, access_key_id: &str) -> Option<(&str, &AccessKey)> {
        self.keys
            .get_key_value(access_key_id)
            .map(|(id, key)| (id.as_str(), key))
    }
}

/// Whom a verified request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub access_key_id: String,
    pub account_id: String,
}

/// The parts of a request that a signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path exactly as received, percent-encoding intact.
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn denied(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, ApiError> {
    let incomplete = |what: &str| {
        denied(
            ErrorKind::IncompleteSignature,
            format!("Authorization header requires '{what}' parameter. Authorization={value}"),
        )
    };
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        denied(
            ErrorKind::IncompleteSignature,
            "Only AWS4-HMAC-SHA256 signatures are supported",
        )
    })?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| incomplete("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("Signature"))?;
    let mut scope = credential.splitn(5, '/');
    let (Some(access_key_id), Some(date), Some(region), Some(service), Some(terminator)) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(denied(
            ErrorKind::IncompleteSignature,
            format!(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
            ),
        ));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
    })
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(
        s,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()
    .map(PrimitiveDateTime::assume_utc)
}

/// RFC 1123 as HTTP writes it (`… GMT`) and as Python's `email.utils.formatdate`,
/// which botocore uses, writes it (`… -0000`).
fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    let s = [" GMT", " UTC", " -0000", " +0000"]
        .iter()
        .find_map(|zone| s.strip_suffix(zone))?;
    PrimitiveDateTime::parse(
        s,
        format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second]"
        ),
    )
    .ok()
    .map(PrimitiveDateTime::assume_utc)
}

fn format_amz_date(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap_or_default()
}

/// What a request's head (method, path, query, headers) says about its signature,
/// checked before the body is read: everything except the signature itself, which
/// covers the body.
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The path exactly as received, percent-encoding intact.
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A request whose headers passed every check that does not need the body: a
/// well-formed `Authorization` for a known key, signing `host`, scoped to this
/// service and region, signed within the allowed clock skew.
pub struct PendingSignature<'a> {
    auth: Authorization<'a>,
    amz_date: String,
    access_key_id: &'a str,
    key: &'a AccessKey,
}

/// Checks everything a signature's headers can show without the body. A failure
/// here costs the server no body bytes.
pub fn check_head<'a>(
    head: &RequestHead<'a>,
    credentials: &'a Credentials,
    region: &str,
    now: OffsetDateTime,
) -> Result<PendingSignature<'a>, ApiError> {
    let headers = head.headers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = header("authorization").ok_or_else(|| {
        denied(
            ErrorKind::MissingAuthenticationToken,
            "Missing Authentication Token: the request is not signed with AWS Signature Version 4",
        )
    })?;
    let auth = parse_authorization(authorization)?;
    if !auth.signed_headers.split(';').any(|h| h == "host") {
        return Err(denied(
            ErrorKind::IncompleteSignature,
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    // SigV4 takes the signing time from X-Amz-Date, or else from Date (botocore
    // signs with Date when a request carries one).
    let (signed_at, amz_date) = match header("x-amz-date") {
        Some(v) => {
            let t = parse_amz_date(v).ok_or_else(|| {
                denied(
                    ErrorKind::IncompleteSignature,
                    format!("X-Amz-Date '{v}' is not of the form YYYYMMDDTHHMMSSZ"),
                )
            })?;
            (t, v.to_owned())
        }
        None => {
            let v = header("date").ok_or_else(|| {
                denied(
                    ErrorKind::IncompleteSignature,
                    "Authorization requires the X-Amz-Date or Date header",
                )
            })?;
            let t = parse_http_date(v).ok_or_else(|| {
                denied(
                    ErrorKind::IncompleteSignature,
                    format!("Date '{v}' is not an RFC 1123 date"),
                )
            })?;
            (t, format_amz_date(t))
        }
    };

    let (access_key_id, key) = credentials
        .get_key_value(auth.access_key_id)
        .ok_or_else(|| {
            denied(
                ErrorKind::UnrecognizedClient,
                "The security token included in the request is invalid: unknown access key id",
            )
        })?;
    if auth.service != SERVICE {
        return Err(denied(
            ErrorKind::InvalidSignature,
            format!(
                "Credential should be scoped to correct service: '{SERVICE}', not '{}'",
                auth.service
            ),
        ));
    }
    if auth.region != region {
        return Err(denied(
            ErrorKind::InvalidSignature,
            format!(
                "Credential should be scoped to a valid region: '{region}', not '{}'",
                auth.region
            ),
        ));
    }
    if auth.terminator != "aws4_request" || !amz_date.starts_with(auth.date) || auth.date.len() != 8
    {
        return Err(denied(
            ErrorKind::InvalidSignature,
            format!(
                "Credential scope date '{}' does not match X-Amz-Date '{amz_date}'",
                auth.date
            ),
        ));
    }
    let skew = (now - signed_at).whole_seconds();
    if skew.abs() > MAX_CLOCK_SKEW_SECONDS {
        return Err(denied(
            ErrorKind::InvalidSignature,
            format!(
                "Signature expired or not yet valid: {amz_date} is more than 15 minutes from the server's time"
            ),
        ));
    }
    Ok(PendingSignature {
        auth,
        amz_date,
        access_key_id,
        key,
    })
}

impl PendingSignature<'_> {
    /// Recomputes the signature over the head and the body, compares in constant
    /// time, and names the caller.
    pub fn verify(self, head: &RequestHead<'_>, body: &[u8]) -> Result<Caller, ApiError> {
        let auth = &self.auth;
        let canonical = canonical_request(head, body, auth.signed_headers)?;
        let mut string_to_sign = String::with_capacity(160);
        let _ = write!(
            string_to_sign,
            "AWS4-HMAC-SHA256\n{}\n{}/{}/{}/aws4_request\n{}",
            self.amz_date,
            auth.date,
            auth.region,
            auth.service,
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let signing_key = signing_key(&self.key.secret, auth.date, auth.region, auth.service);
        let expected = hex::encode(hmac(&signing_key, string_to_sign.as_bytes()));
        if !bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
            return Err(denied(
                ErrorKind::InvalidSignature,
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
            ));
        }
        Ok(Caller {
            access_key_id: self.access_key_id.to_owned(),
            account_id: self.key.account_id.clone(),
        })
    }
}

/// Verifies the request's signature and returns the caller it identifies: the
/// head's checks, then the signature.
pub fn verify(
    req: &SignedRequest<'_>,
    credentials: &Credentials,
    region: &str,
    now: OffsetDateTime,
) -> Result<Caller, ApiError> {
    let head = RequestHead {
        method: req.method,
        raw_path: req.raw_path,
        raw_query: req.raw_query,
        headers: req.headers,
    };
    check_head(&head, credentials, region, now)?.verify(&head, req.body)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
const URI_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const URI_ENCODE_PATH: &AsciiSet = &URI_ENCODE.remove(b'/');

fn canonical_request(
    req: &RequestHead<'_>,
    body: &[u8],
    signed_headers: &str,
) -> Result<String, ApiError> {
    let mut out = String::with_capacity(256 + req.raw_path.len());
    out.push_str(req.method);
    out.push('\n');
    let path = if req.raw_path.is_empty() {
        "/"
    } else {
        req.raw_path
    };
    let _ = write!(out, "{}", utf8_percent_encode(path, URI_ENCODE_PATH));
    out.push('\n');

    if let Some(q) = req.raw_query {
        // The pairs exactly as the router reads them (`query_pairs`), encoded again.
        let mut pairs: Vec<(String, String)> = query_pairs(q)
            .map(|(k, v)| {
                (
                    percent_encode(&k, URI_ENCODE).to_string(),
                    percent_encode(&v, URI_ENCODE).to_string(),
                )
            })
            .collect();
        pairs.sort();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            let _ = write!(out, "{k}={v}");
        }
    }
    out.push('\n');

    for name in signed_headers.split(';') {
        out.push_str(name);
        out.push(':');
        let mut first = true;
        for value in req.headers.get_all(name) {
            let value = value.to_str().map_err(|_| {
                denied(
                    ErrorKind::InvalidSignature,
                    format!("signed header '{name}' is not valid text"),
                )
            })?;
            if !first {
                out.push(',');
            }
            first = false;
            // Trim, and collapse runs of spaces to one, as the signer did.
            let mut last_space = false;
            for c in value.trim().chars() {
                if c == ' ' {
                    if !last_space {
                        out.push(' ');
                    }
                    last_space = true;
                } else {
                    out.push(c);
                    last_space = false;
                }
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(signed_headers);
    out.push('\n');
    out.push_str(&hex::encode(Sha256::digest(body)));
    Ok(out)
}

/// The query's `(name, value)` pairs, percent-decoded to bytes. The one reading of
/// a query: the signature covers exactly what the router acts on. `+` is a plus
/// sign, as SigV4 encodes it (`%2B`), never a space (which signers send as `%20`).
pub fn query_pairs(raw: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    raw.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (
            percent_decode_str(k).collect::<Vec<u8>>(),
            percent_decode_str(v).collect::<Vec<u8>>(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials as AwsCredentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    use std::time::{Duration, SystemTime};

    fn creds() -> Credentials {
        let mut c = Credentials::new();
        c.insert(
            "AKID",
            AccessKey {
                secret: "secret".into(),
                account_id: "000000000000".into(),
            },
        );
        c
    }

    /// Signs with AWS's own signer, then checks our verifier agrees.
    fn signed(
        method: &str,
        uri: &str,
        body: &[u8],
        secret: &str,
        at: SystemTime,
    ) -> http::Request<Vec<u8>> {
        let identity = AwsCredentials::new("AKID", secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("ivs")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:7700{uri}"))
            .header("host", "127.0.0.1:7700")
            .header("content-type", "application/json")
            .body(body.to_vec())
            .unwrap();
        let signable = SignableRequest::new(
            method,
            req.uri().to_string(),
            req.headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
        req
    }

    fn check(req: &http::Request<Vec<u8>>, now: SystemTime) -> Result<Caller, ApiError> {
        let signed = SignedRequest {
            method: req.method().as_str(),
            raw_path: req.uri().path(),
            raw_query: req.uri().query(),
            headers: req.headers(),
            body: req.body(),
        };
        verify(&signed, &creds(), "us-east-1", now.into())
    }

    #[test]
    fn accepts_what_the_aws_signer_signs() {
        let now = SystemTime::now();
        let req = signed("POST", "/GetStage", br#"{"arn":"x"}"#, "secret", now);
        assert_eq!(check(&req, now).unwrap().account_id, "000000000000");
    }

    #[test]
    fn accepts_encoded_paths_and_repeated_query_keys() {
        let now = SystemTime::now();
        let uri = "/tags/arn%3Aaws%3Aivs%3Aus-east-1%3A000000000000%3Astage%2Fabc?tagKeys=b&tagKeys=a%20c";
        let req = signed("DELETE", uri, b"", "secret", now);
        check(&req, now).unwrap();
    }

    #[test]
    fn refuses_wrong_secret_tampered_body_and_skew() {
        let now = SystemTime::now();
        let req = signed("POST", "/GetStage", b"{}", "wrong", now);
        assert_eq!(
            check(&req, now).unwrap_err().kind,
            ErrorKind::InvalidSignature
        );

        let mut req = signed("POST", "/GetStage", b"{}", "secret", now);
        *req.body_mut() = b"{ }".to_vec();
        assert_eq!(
            check(&req, now).unwrap_err().kind,
            ErrorKind::InvalidSignature
        );

        let req = signed(
            "POST",
            "/GetStage",
            b"{}",
            "secret",
            now - Duration::from_secs(16 * 60),
        );
        assert_eq!(
            check(&req, now).unwrap_err().kind,
            ErrorKind::InvalidSignature
        );
    }

    #[test]
    fn reads_the_signing_time_from_date_without_x_amz_date() {
        assert_eq!(
            parse_http_date("Fri, 27 Nov 2026 16:43:19 GMT")
                .map(format_amz_date)
                .as_deref(),
            Some("20261127T164319Z")
        );
        assert_eq!(
            parse_http_date("Fri, 27 Nov 2026 16:43:19 -0000")
                .map(format_amz_date)
                .as_deref(),
            Some("20261127T164319Z")
        );
    }

    #[test]
    fn refuses_unsigned_and_unknown_keys() {
        let now = SystemTime::now();
        let mut req = signed("POST", "/GetStage", b"{}", "secret", now);
        req.headers_mut().remove("authorization");
        assert_eq!(
            check(&req, now).unwrap_err().kind,
            ErrorKind::MissingAuthenticationToken
        );
        let mut req = signed("POST", "/GetStage", b"{}", "secret", now);
        let auth = req.headers()["authorization"]
            .to_str()
            .unwrap()
            .replace("AKID", "NOPE");
        req.headers_mut()
            .insert("authorization", auth.parse().unwrap());
        assert_eq!(
            check(&req, now).unwrap_err().kind,
            ErrorKind::UnrecognizedClient
        );
    }
}
