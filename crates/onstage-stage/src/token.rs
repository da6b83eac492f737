//! Participant tokens: the JWTs a participant presents to join a stage.
//!
//! IVS signs its tokens with a non-standard `alg: KMS`; onstage signs with standard
//! ES384 under a P-384 key generated once and kept in the store, and publishes the
//! public half as a JWKS so a backend can verify tokens itself.
//!
//! Verification (BEHAVIOUR §3) is split in two: [`inspect`] reads what a token *claims*
//! without trusting it (which key, which stage, which participant), so the caller
//! can look the key and the stage up; [`verify`] then checks the signature and every
//! claim rule against them. Both are pure; the lookups live in the control plane.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DomainError;
use crate::ids::{Arn, ResourceKind};
use crate::model::{Attributes, EventErrorCode, StageEndpoints};
use crate::time_fmt::iso8601;

/// `version` of the tokens onstage issues.
pub const SERVER_TOKEN_VERSION: &str = "0.0";
/// `version` of self-signed tokens (signed with an imported public key's private half).
pub const SELF_SIGNED_TOKEN_VERSION: &str = "1.0";
/// A self-signed token may live at most 14 days: `exp` ≤ `iat` + this.
pub const MAX_SELF_SIGNED_LIFETIME_SECS: i64 = 14 * 24 * 3600;
/// How far ahead of our clock a self-signed token's `iat` may be.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// Longest participant id (`jti`) a self-signed token may carry.
pub const MAX_PARTICIPANT_ID_LEN: usize = 64;
/// Longest `user_id`, as CreateParticipantToken allows it.
pub const MAX_USER_ID_LEN: usize = 128;

/// The claim set of a participant token, as IVS uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantClaims {
    pub exp: i64,
    pub iat: i64,
    /// The participant id.
    pub jti: String,
    /// The stage ARN.
    pub resource: String,
    /// The stage id.
    pub topic: String,
    pub events_url: String,
    pub whip_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
    pub capabilities: Capabilities,
    pub version: String,
}

/// What the token lets its holder do; only granted capabilities are listed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_publish: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_subscribe: bool,
}

/// The server's token-signing key.
pub struct TokenSigner {
    kid: String,
    /// Parsed once: re-reading the PKCS#8 document for every token costs more than
    /// the signature itself.
    key_pair: EcdsaKeyPair,
    /// `base64url({"alg":"ES384","typ":"JWT","kid":…})`, the same for every token.
    encoded_header: String,
    rng: SystemRandom,
    decoding_key: DecodingKey,
    public_jwk: serde_json::Value,
}

impl TokenSigner {
    /// A new P-384 private key, PKCS#8 DER, for storing.
    pub fn generate_pkcs8() -> Result<Vec<u8>, DomainError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| {
                    DomainError::Internal("could not generate the token-signing key".into())
                })?;
        Ok(doc.as_ref().to_vec())
    }

    /// Loads the signer from the stored PKCS#8 document. The key id is derived from
    /// the public key, so it is stable across restarts and nodes.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, DomainError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8).map_err(|_| {
                DomainError::Internal("the stored token-signing key is not a P-384 key".into())
            })?;
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || X (48 bytes) || Y (48 bytes).
        if point.len() != 97 || point[0] != 4 {
            return Err(DomainError::Internal(
                "unexpected token-signing public key encoding".into(),
            ));
        }
        let (x, y) = (&point[1..49], &point[49..97]);
        let kid = format!("onstage-{}", &hex::encode(Sha256::digest(point))[..16]);
        let public_jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-384",
            "alg": "ES384",
            "use": "sig",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        });
        let decoding_key = DecodingKey::from_ec_der(point);
        let header = serde_json::json!({ "alg": "ES384", "typ": "JWT", "kid": kid });
        let encoded_header = URL_SAFE_NO_PAD.encode(header.to_string());
        Ok(TokenSigner {
            kid,
            key_pair: pair,
            encoded_header,
            rng: SystemRandom::new(),
            decoding_key,
            public_jwk,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS (RFC 7515): header, claims and the ES384 signature, which for
    /// P-384 is the fixed 96-byte `r || s` that `ECDSA_P384_SHA384_FIXED` produces.
    pub fn sign(&self, claims: &ParticipantClaims) -> Result<String, DomainError> {
        let claims = serde_json::to_vec(claims)
            .map_err(|e| DomainError::Internal(format!("could not encode token claims: {e}")))?;
        let mut token =
            String::with_capacity(self.encoded_header.len() + claims.len() * 4 / 3 + 140);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| DomainError::Internal("could not sign a participant token".into()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }

    /// The JSON Web Key Set published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.public_jwk] })
    }

    /// The public half, for verifying the tokens this signer issued.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding_key
    }
}

/// Why a participant token was not accepted. Every variant means the token does not
/// authenticate its holder for the stage: HTTP 401 (BEHAVIOUR §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the participant token is malformed: {0}")]
    Malformed(String),
    #[error("the participant token's signature is not valid")]
    BadSignature,
    #[error("the participant token expired at {0}")]
    Expired(String),
    #[error(
        "the participant token is signed with a key that does not exist (unknown or deleted): {0}"
    )]
    UnknownKey(String),
    #[error("the participant token is not valid for this stage: {0}")]
    WrongStage(String),
}

impl TokenRejection {
    /// The `errorCode` recorded with the `JOIN_ERROR`: the model has no code for a
    /// bad token; the token is the participant's input.
    pub fn error_code(&self) -> EventErrorCode {
        EventErrorCode::InvalidInput
    }
}

/// What a token claims before anything about it is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnverifiedToken {
    /// The `kid` header: the server key's id, or an imported public key's ARN.
    pub kid: String,
    /// The `resource` claim, when it is a stage ARN.
    pub stage_arn: Option<Arn>,
    /// The `jti` claim, when it has the shape of a participant id.
    pub participant_id: Option<String>,
}

/// Who signed a token, as far as its `kid` tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenIssuer {
    /// This deployment's signing key ([`TokenSigner`]).
    Server,
    /// A customer's key imported with ImportPublicKey; the `kid` is its ARN.
    PublicKey(Arn),
}

/// Decodes the header and claims without verifying anything, so the caller can
/// find the verification key and the stage. Only ES384 is ever accepted.
pub fn inspect(token: &str) -> Result<UnverifiedToken, TokenRejection> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| TokenRejection::Malformed(format!("cannot decode the JWT header: {e}")))?;
    if header.alg != Algorithm::ES384 {
        return Err(TokenRejection::Malformed(format!(
            "alg must be ES384, got {:?}",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| TokenRejection::Malformed("the JWT header has no kid".into()))?;
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| TokenRejection::Malformed(format!("cannot decode the JWT claims: {e}")))?;
    let stage_arn = claims
        .get("resource")
        .and_then(|v| v.as_str())
        .and_then(Arn::parse)
        .filter(|a| a.kind == ResourceKind::Stage);
    let participant_id = claims
        .get("jti")
        .and_then(|v| v.as_str())
        .filter(|j| is_participant_id(j))
        .map(str::to_owned);
    Ok(UnverifiedToken {
        kid,
        stage_arn,
        participant_id,
    })
}

impl UnverifiedToken {
    /// Who signed the token, judged by its `kid` alone.
    pub fn issuer(&self, server_kid: &str) -> Result<TokenIssuer, TokenRejection> {
        if self.kid == server_kid {
            return Ok(TokenIssuer::Server);
        }
        match Arn::parse(&self.kid) {
            Some(arn) if arn.kind == ResourceKind::PublicKey => Ok(TokenIssuer::PublicKey(arn)),
            _ => Err(TokenRejection::UnknownKey(self.kid.clone())),
        }
    }
}

/// The facts a token is checked against.
pub struct TokenCheck<'a> {
    pub issuer: &'a TokenIssuer,
    /// The issuer's public key.
    pub key: &'a DecodingKey,
    /// The stage the token is presented to.
    pub stage_arn: &'a Arn,
    pub endpoints: &'a StageEndpoints,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// Verifies the signature and the claim rules of BEHAVIOUR §3. Tokens onstage issued
/// carry `version` 0.0; self-signed ones `version` 1.0, every claim but `user_id`
/// and `attributes`, a lifetime of at most 14 days and exactly this stage's id, ARN
/// and endpoints.
pub fn verify(token: &str, check: &TokenCheck<'_>) -> Result<ParticipantClaims, TokenRejection> {
    let claims = verify_signature(token, check.key)?;
    check_claims(claims, check)
}

/// Checks the signature alone, with the issuer's public key, and reads the claims
/// it covers. A token that passes is *genuine*: its issuer signed exactly these
/// bytes, whatever its claims say (it may still be expired, or for another stage).
pub fn verify_signature(token: &str, key: &DecodingKey) -> Result<SignedClaims, TokenRejection> {
    use jsonwebtoken::errors::ErrorKind;
    let mut validation = Validation::new(Algorithm::ES384);
    // Expiry is checked in `check_claims`, against the caller's clock and without leeway.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    // Claims are read as plain JSON here, so that a signed token whose claims do not
    // have IVS's shape still counts as signed (`check_claims` refuses it).
    match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
        Ok(data) => Ok(SignedClaims(data.claims)),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidKeyFormat => TokenRejection::BadSignature,
            _ => TokenRejection::Malformed(e.to_string()),
        }),
    }
}

/// The claims of a token whose signature [`verify_signature`] verified.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedClaims(serde_json::Value);

/// The claim rules of BEHAVIOUR §3, for a token whose signature verified.
pub fn check_claims(
    claims: SignedClaims,
    check: &TokenCheck<'_>,
) -> Result<ParticipantClaims, TokenRejection> {
    let claims: ParticipantClaims = serde_json::from_value(claims.0)
        .map_err(|e| TokenRejection::Malformed(format!("claims: {e}")))?;
    let self_signed = matches!(check.issuer, TokenIssuer::PublicKey(_));
    let version = if self_signed {
        SELF_SIGNED_TOKEN_VERSION
    } else {
        SERVER_TOKEN_VERSION
    };
    if claims.version != version {
        return Err(TokenRejection::Malformed(format!(
            "version must be \"{version}\" for a token signed with this key, got \"{}\"",
            claims.version
        )));
    }
    if !is_participant_id(&claims.jti) {
        return Err(TokenRejection::Malformed(format!(
            "jti must be 1 to {MAX_PARTICIPANT_ID_LEN} characters of [a-zA-Z0-9_-]"
        )));
    }
    if claims.exp <= check.now {
        return Err(TokenRejection::Expired(iso8601(
            claims.exp.saturating_mul(1000),
        )));
    }
    if self_signed {
        if claims.iat > check.now + MAX_CLOCK_SKEW_SECS {
            return Err(TokenRejection::Malformed(format!(
                "iat lies in the future ({})",
                iso8601(claims.iat.saturating_mul(1000))
            )));
        }
        if claims.exp > claims.iat.saturating_add(MAX_SELF_SIGNED_LIFETIME_SECS) {
            return Err(TokenRejection::Malformed(
                "exp must be at most 14 days after iat".into(),
            ));
        }
        if claims
            .user_id
            .as_ref()
            .is_some_and(|u| u.chars().count() > MAX_USER_ID_LEN)
        {
            return Err(TokenRejection::Malformed(format!(
                "user_id must be at most {MAX_USER_ID_LEN} characters"
            )));
        }
        let attribute_bytes: usize = claims
            .attributes
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if attribute_bytes > crate::service::MAX_ATTRIBUTES_BYTES {
            return Err(TokenRejection::Malformed(
                "attributes must be at most 1 KB".into(),
            ));
        }
    }
    let stage_arn = check.stage_arn.to_string();
    if claims.resource != stage_arn {
        return Err(TokenRejection::WrongStage(format!(
            "resource is {}, not {stage_arn}",
            claims.resource
        )));
    }
    if claims.topic != check.stage_arn.id {
        return Err(TokenRejection::WrongStage(format!(
            "topic is {}, not {}",
            claims.topic, check.stage_arn.id
        )));
    }
    if self_signed {
        if claims.whip_url != check.endpoints.whip {
            return Err(TokenRejection::WrongStage(format!(
                "whip_url must be the stage's WHIP endpoint {}",
                check.endpoints.whip
            )));
        }
        if claims.events_url != check.endpoints.events {
            return Err(TokenRejection::WrongStage(format!(
                "events_url must be the stage's events endpoint {}",
                check.endpoints.events
            )));
        }
    }
    Ok(claims)
}

/// A participant id: what onstage issues (12 alphanumerics) or what a self-signer
/// chose, at most 64 of `[a-zA-Z0-9_-]`.
pub fn is_participant_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PARTICIPANT_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses a customer's public key for self-signed tokens: exactly one PEM block
/// labelled `PUBLIC KEY` (whitespace around it, nothing else), SubjectPublicKeyInfo,
/// ECDSA P-384. ImportPublicKey and token verification both read a key through
/// this, so the key that is fingerprinted is the key that verifies.
fn parse_p384_pem(pem: &str) -> Result<p384::PublicKey, DomainError> {
    use p384::pkcs8::DecodePublicKey;
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let invalid = |why: &str| {
        DomainError::Validation(format!(
            "publicKeyMaterial must be exactly one ECDSA P-384 public key in PEM \
             (SubjectPublicKeyInfo, `{BEGIN}`) format: {why}"
        ))
    };
    let block = pem.trim();
    if !block.starts_with(BEGIN) || !block.ends_with(END) {
        return Err(invalid(
            "the text must be one PUBLIC KEY block and nothing else",
        ));
    }
    if block.matches("-----BEGIN").count() != 1 || block.matches("-----END").count() != 1 {
        return Err(invalid("it holds more than one PEM block"));
    }
    p384::PublicKey::from_public_key_pem(block)
        .map_err(|_| invalid("the block is not a P-384 SubjectPublicKeyInfo"))
}

/// The public key's DER (SubjectPublicKeyInfo) and its fingerprint (SHA-256 of the
/// DER, as colon-separated hex pairs). See [`parse_p384_pem`] for what is accepted.
pub fn parse_p384_public_key(pem: &str) -> Result<(Vec<u8>, String), DomainError> {
    use p384::pkcs8::EncodePublicKey;
    let key = parse_p384_pem(pem)?;
    let der = key
        .to_public_key_der()
        .map_err(|e| DomainError::Internal(format!("re-encoding a parsed public key: {e}")))?
        .as_bytes()
        .to_vec();
    let digest = Sha256::digest(&der);
    let fingerprint = digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok((der, fingerprint))
}

/// The key that verifies tokens signed with an imported public key, read from its
/// PEM exactly as ImportPublicKey read it.
pub fn p384_decoding_key(pem: &str) -> Result<DecodingKey, DomainError> {
    use p384::elliptic_curve::sec1::ToSec1Point;
    let key = parse_p384_pem(pem)?;
    Ok(DecodingKey::from_ec_der(
        key.to_sec1_point(false).as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn signs_tokens_that_verify_against_the_jwk() {
        let signer = TokenSigner::from_pkcs8(&TokenSigner::generate_pkcs8().unwrap()).unwrap();
        let claims = ParticipantClaims {
            exp: 4_000_000_000,
            iat: 1_700_000_000,
            jti: "abcdefabcdef".into(),
            resource: "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef".into(),
            topic: "abcdefabcdef".into(),
            events_url: "ws://127.0.0.1:7700/events".into(),
            whip_url: "http://127.0.0.1:7700/whip".into(),
            user_id: None,
            attributes: None,
            capabilities: Capabilities {
                allow_publish: true,
                allow_subscribe: false,
            },
            version: "0.0".into(),
        };
        let token = signer.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
        let jwk = &signer.jwks()["keys"][0];
        let key =
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap();
        let mut validation = Validation::new(Algorithm::ES384);
        validation.validate_aud = false;
        let decoded = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        assert_eq!(
            decoded.claims["capabilities"],
            serde_json::json!({"allow_publish": true})
        );
        assert!(decoded.claims.get("user_id").is_none());
    }

    #[test]
    fn refuses_keys_of_other_curves() {
        // A P-256 SubjectPublicKeyInfo.
        let p256 = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\nq9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            parse_p384_public_key(p256),
            Err(DomainError::Validation(_))
        ));
    }
}
