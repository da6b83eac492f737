//! Opaque `nextToken`s. A token carries a position in a list (the store's keyset
//! cursor), bound to the operation and the account that received it, and
//! authenticated with a server secret: a forged, altered or foreign token is refused
//! with ValidationException instead of being interpreted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{ApiError, ErrorKind};

const TAG_LEN: usize = 16;

pub struct PageTokens {
    key: Vec<u8>,
}

impl PageTokens {
    pub fn new(key: Vec<u8>) -> Self {
        PageTokens { key }
    }

    fn tag(&self, operation: &str, account: &str, cursor: i64) -> [u8; TAG_LEN] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(operation.as_bytes());
        mac.update(b"\0");
        mac.update(account.as_bytes());
        mac.update(b"\0");
        mac.update(&cursor.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// `[a-zA-Z0-9_-]`, 32 characters: within the model's pattern and length.
    pub fn encode(&self, operation: &str, account: &str, cursor: i64) -> String {
        let mut raw = Vec::with_capacity(8 + TAG_LEN);
        raw.extend_from_slice(&cursor.to_be_bytes());
        raw.extend_from_slice(&self.tag(operation, account, cursor));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` and the empty string mean "from the start".
    pub fn decode(
        &self,
        operation: &str,
        account: &str,
        token: Option<&str>,
    ) -> Result<Option<i64>, ApiError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let invalid = || {
            ApiError::new(
                ErrorKind::Validation,
                "nextToken: the pagination token is not valid for this request",
            )
        };
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        if raw.len() != 8 + TAG_LEN {
            return Err(invalid());
        }
        let mut cursor_bytes = [0u8; 8];
        cursor_bytes.copy_from_slice(&raw[..8]);
        let cursor = i64::from_be_bytes(cursor_bytes);
        let expected = self.tag(operation, account, cursor);
        if subtle::ConstantTimeEq::ct_eq(&expected[..], &raw[8..]).into() {
            Ok(Some(cursor))
        } else {
            Err(invalid())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let t = PageTokens::new(b"k".to_vec());
        let token = t.encode("ListStages", "000000000000", 42);
        assert!(token.len() <= 1024);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            t.decode("ListStages", "000000000000", Some(&token))
                .unwrap(),
            Some(42)
        );
        assert!(
            t.decode("ListStages", "111111111111", Some(&token))
                .is_err()
        );
        assert!(
            t.decode("ListPublicKeys", "000000000000", Some(&token))
                .is_err()
        );
        assert!(
            t.decode("ListStages", "000000000000", Some("AAAA"))
                .is_err()
        );
        assert_eq!(t.decode("ListStages", "000000000000", None).unwrap(), None);
    }
}
