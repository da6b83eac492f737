//! Participant tokens: the JWTs a participant presents to join a stage.
//!
//! IVS signs its tokens with a non-standard `alg: KMS`; onstage signs with standard
//! ES384 under a P-384 key generated once and kept in the store, and publishes the
//! public half as a JWKS so a backend can verify tokens itself.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DomainError;
use crate::model::Attributes;

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
    encoding_key: EncodingKey,
    public_jwk: serde_json::Value,
}

impl TokenSigner {
    /// A new P-384 private key, PKCS#8 DER, for storing.
    pub fn generate_pkcs8() -> Result<Vec<u8>, DomainError> {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| DomainError::Internal("could not generate the token-signing key".into()))?;
        Ok(doc.as_ref().to_vec())
    }

    /// Loads the signer from the stored PKCS#8 document. The key id is derived from
    /// the public key, so it is stable across restarts and nodes.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, DomainError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8)
            .map_err(|_| DomainError::Internal("the stored token-signing key is not a P-384 key".into()))?;
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || X (48 bytes) || Y (48 bytes).
        if point.len() != 97 || point[0] != 4 {
            return Err(DomainError::Internal("unexpected token-signing public key encoding".into()));
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
        Ok(TokenSigner { kid, encoding_key: EncodingKey::from_ec_der(pkcs8), public_jwk })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn sign(&self, claims: &ParticipantClaims) -> Result<String, DomainError> {
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding_key)
            .map_err(|e| DomainError::Internal(format!("could not sign a participant token: {e}")))
    }

    /// The JSON Web Key Set published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.public_jwk] })
    }
}

/// Parses a customer's public key for self-signed tokens: PEM, SubjectPublicKeyInfo,
/// ECDSA P-384 and nothing else. Returns the DER and its fingerprint (SHA-256 of the
/// DER, as colon-separated hex pairs).
pub fn parse_p384_public_key(pem: &str) -> Result<(Vec<u8>, String), DomainError> {
    use p384::pkcs8::DecodePublicKey;
    use p384::pkcs8::EncodePublicKey;
    let begin = "-----BEGIN PUBLIC KEY-----";
    let end = "-----END PUBLIC KEY-----";
    let invalid = || {
        DomainError::Validation(
            "publicKeyMaterial must be an ECDSA P-384 public key in PEM (SubjectPublicKeyInfo) format".into(),
        )
    };
    let start = pem.find(begin).ok_or_else(invalid)?;
    let stop = pem[start..].find(end).ok_or_else(invalid)? + start + end.len();
    let key = p384::PublicKey::from_public_key_pem(&pem[start..stop]).map_err(|_| invalid())?;
    let der = key.to_public_key_der().map_err(|_| invalid())?.as_bytes().to_vec();
    let digest = Sha256::digest(&der);
    let fingerprint = digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    Ok((der, fingerprint))
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
            capabilities: Capabilities { allow_publish: true, allow_subscribe: false },
            version: "0.0".into(),
        };
        let token = signer.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
        let jwk = &signer.jwks()["keys"][0];
        let key = DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::ES384);
        validation.validate_aud = false;
        let decoded = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        assert_eq!(decoded.claims["capabilities"], serde_json::json!({"allow_publish": true}));
        assert!(decoded.claims.get("user_id").is_none());
    }

    #[test]
    fn refuses_keys_of_other_curves() {
        // A P-256 SubjectPublicKeyInfo.
        let p256 = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\nq9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n-----END PUBLIC KEY-----\n";
        assert!(matches!(parse_p384_public_key(p256), Err(DomainError::Validation(_))));
    }
}
