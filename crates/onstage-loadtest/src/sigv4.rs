//! AWS Signature Version 4, just what the load tool needs: header-signed requests
//! with a body, no query string, signed headers `content-type;host;x-amz-date`.
//!
//! Written by hand rather than with `aws-sigv4` because it is cheaper per request
//! (the signing key is derived once per day instead of per request, and nothing is
//! parsed back out of strings); the tests check it against `aws-sigv4` byte for byte.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The headers a signed request must carry, besides `host` and `content-type`.
pub struct SignedHeaders {
    pub amz_date: String,
    pub authorization: String,
}

/// Signs requests for one access key, region and service.
#[derive(Clone)]
pub struct Signer {
    access_key_id: String,
    secret_access_key: String,
    region: String,
    service: String,
    /// The signing key of the last date signed for (`YYYYMMDD`, key).
    cached_key: Option<(String, [u8; 32])>,
}

const SIGNED_HEADERS: &str = "content-type;host;x-amz-date";

impl Signer {
    pub fn new(access_key_id: &str, secret_access_key: &str, region: &str, service: &str) -> Self {
        Signer {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            cached_key: None,
        }
    }

    /// Signs `method path` (a path without query; percent-encoding in it is kept
    /// and encoded once more, as AWS does for every service but S3) sent to `host`
    /// with this `content_type` and `body`, at `unix_seconds`.
    pub fn sign(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        content_type: &str,
        body: &[u8],
        unix_seconds: u64,
    ) -> SignedHeaders {
        let amz_date = amz_date(unix_seconds);
        let date = &amz_date[..8];

        let mut canonical = String::with_capacity(256);
        canonical.push_str(method);
        canonical.push('\n');
        encode_path(path, &mut canonical);
        // Empty query string, then the signed headers in order, each `name:value\n`.
        let _ = write!(
            canonical,
            "\n\ncontent-type:{}\nhost:{}\nx-amz-date:{amz_date}\n\n{SIGNED_HEADERS}\n{}",
            content_type.trim(),
            host.trim(),
            hex::encode(Sha256::digest(body)),
        );

        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = self.signing_key(date);
        let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}",
            self.access_key_id
        );
        SignedHeaders {
            amz_date,
            authorization,
        }
    }

    fn signing_key(&mut self, date: &str) -> [u8; 32] {
        if let Some((cached_date, key)) = &self.cached_key
            && cached_date == date
        {
            return *key;
        }
        let k_date = hmac(
            format!("AWS4{}", self.secret_access_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, self.service.as_bytes());
        let key = hmac(&k_service, b"aws4_request");
        self.cached_key = Some((date.to_owned(), key));
        key
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Appends the canonical URI of `path`: every byte but unreserved characters and
/// `/` percent-encoded, upper-case hex.
fn encode_path(path: &str, out: &mut String) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time, in UTC.
pub fn amz_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    #[test]
    fn formats_amz_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(1_795_796_599), "20261127T162319Z");
        assert_eq!(amz_date(4_107_542_399), "21000228T235959Z");
    }

    #[test]
    fn encodes_paths_as_non_s3_services_do() {
        let mut s = String::new();
        encode_path("/tags/arn%3Aaws%3Aivs", &mut s);
        assert_eq!(s, "/tags/arn%253Aaws%253Aivs");
    }

    /// AWS's own signer over the same request: returns (signature, authorization).
    fn aws_sigv4_signature(
        method: &str,
        path: &str,
        host: &str,
        body: &[u8],
        at: SystemTime,
    ) -> (String, String) {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        use aws_sigv4::sign::v4;
        use aws_smithy_runtime_api::client::identity::Identity;
        let identity: Identity = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("ivs")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .expect("signing params")
            .into();
        let headers = [("host", host), ("content-type", "application/json")];
        let request = SignableRequest::new(
            method,
            format!("http://{host}{path}"),
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .expect("signable request");
        let (instructions, signature) = sign(request, &params).expect("sign").into_parts();
        let authorization = instructions
            .headers()
            .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.to_owned())
            .expect("authorization header");
        (signature, authorization)
    }

    #[test]
    fn matches_aws_sigv4() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_796_599);
        for (path, body) in [
            (
                "/GetStage",
                br#"{"arn":"arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234"}"#.as_slice(),
            ),
            ("/CreateParticipantToken", br#"{"stageArn":"x"}"#.as_slice()),
            (
                "/tags/arn%3Aaws%3Aivs%3Aus-east-1%3A000000000000%3Astage%2Fabc",
                b"".as_slice(),
            ),
        ] {
            let (expected_sig, expected_auth) =
                aws_sigv4_signature("POST", path, "127.0.0.1:7700", body, at);
            let mut signer = Signer::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "us-east-1",
                "ivs",
            );
            let ours = signer.sign(
                "POST",
                path,
                "127.0.0.1:7700",
                "application/json",
                body,
                1_795_796_599,
            );
            assert_eq!(ours.amz_date, "20261127T162319Z");
            assert_eq!(ours.authorization, expected_auth, "path {path}");
            assert!(ours.authorization.ends_with(&expected_sig));
        }
    }

    /// `cargo test --release -p onstage-loadtest -- --ignored --nocapture signing_cost`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn signing_cost() {
        let body = br#"{"arn":"arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234"}"#;
        let n = 200_000u32;
        let mut signer = Signer::new("onstage", "onstage-secret", "us-east-1", "ivs");
        let started = Instant::now();
        let mut total = 0usize;
        for i in 0..n {
            total += signer
                .sign(
                    "POST",
                    "/GetStage",
                    "127.0.0.1:7700",
                    "application/json",
                    body,
                    1_795_796_599 + u64::from(i),
                )
                .authorization
                .len();
        }
        let ours = started.elapsed() / n;
        let started = Instant::now();
        for i in 0..n {
            let at = UNIX_EPOCH + Duration::from_secs(1_795_796_599 + u64::from(i));
            total += aws_sigv4_signature("POST", "/GetStage", "127.0.0.1:7700", body, at)
                .1
                .len();
        }
        let theirs = started.elapsed() / n;
        println!("per signature: hand-written {ours:?}, aws-sigv4 {theirs:?} ({total})");
    }
}
