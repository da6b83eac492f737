//! Keys and tokens a customer would make: key pairs to import, and participant
//! tokens signed with them.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair,
};
use base64::Engine;

/// A customer's P-384 key pair: the PKCS#8 private key for signing and the SPKI PEM
/// for ImportPublicKey.
pub fn customer_key() -> (Vec<u8>, String) {
    let alg = &ECDSA_P384_SHA384_FIXED_SIGNING;
    let pkcs8 = match EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()) {
        Ok(k) => k.as_ref().to_vec(),
        Err(e) => panic!("cannot generate a key pair: {e}"),
    };
    match EcdsaKeyPair::from_pkcs8(alg, &pkcs8) {
        Ok(pair) => {
            let pem = spki_pem(&pair);
            (pkcs8, pem)
        }
        Err(e) => panic!("cannot read the generated key pair: {e}"),
    }
}

/// A new P-384 public key, PEM (SubjectPublicKeyInfo), as ImportPublicKey takes it.
pub fn p384_public_key_pem() -> String {
    public_key_pem(&ECDSA_P384_SHA384_FIXED_SIGNING)
}

/// A key of the wrong curve, which ImportPublicKey must refuse.
pub fn p256_public_key_pem() -> String {
    public_key_pem(&ECDSA_P256_SHA256_FIXED_SIGNING)
}

fn public_key_pem(alg: &'static EcdsaSigningAlgorithm) -> String {
    match EcdsaKeyPair::generate(alg) {
        Ok(pair) => spki_pem(&pair),
        Err(e) => panic!("cannot generate a key pair: {e}"),
    }
}

fn spki_pem(pair: &EcdsaKeyPair) -> String {
    let der = match pair.public_key().as_der() {
        Ok(der) => der,
        Err(e) => panic!("cannot encode the public key: {e}"),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// Signs arbitrary claims with a customer key under `kid`.
pub fn sign(pkcs8: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(kid.to_owned());
    match jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8),
    ) {
        Ok(token) => token,
        Err(e) => panic!("cannot sign the claims: {e}"),
    }
}
