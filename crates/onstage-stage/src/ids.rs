//! Identifiers: accounts, ARNs and the random ids of resources and sessions.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;

/// The caller's scope: every resource belongs to exactly one account in one region,
/// and a caller sees nothing outside its own scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Account {
    pub id: String,
    pub region: String,
}

/// The kinds of resource that have ARNs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Stage,
    PublicKey,
    EncoderConfiguration,
    StorageConfiguration,
    IngestConfiguration,
    Composition,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 6] = [
        ResourceKind::Stage,
        ResourceKind::PublicKey,
        ResourceKind::EncoderConfiguration,
        ResourceKind::StorageConfiguration,
        ResourceKind::IngestConfiguration,
        ResourceKind::Composition,
    ];

    /// The resource-type segment of the ARN (`stage`, `public-key`, ...).
    pub fn arn_segment(self) -> &'static str {
        match self {
            ResourceKind::Stage => "stage",
            ResourceKind::PublicKey => "public-key",
            ResourceKind::EncoderConfiguration => "encoder-configuration",
            ResourceKind::StorageConfiguration => "storage-configuration",
            ResourceKind::IngestConfiguration => "ingest-configuration",
            ResourceKind::Composition => "composition",
        }
    }

    pub fn from_arn_segment(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.arn_segment() == s)
    }

    /// How the resource is named in messages ("stage", "public key", ...).
    pub fn label(self) -> &'static str {
        match self {
            ResourceKind::Stage => "stage",
            ResourceKind::PublicKey => "public key",
            ResourceKind::EncoderConfiguration => "encoder configuration",
            ResourceKind::StorageConfiguration => "storage configuration",
            ResourceKind::IngestConfiguration => "ingest configuration",
            ResourceKind::Composition => "composition",
        }
    }
}

/// `arn:aws:ivs:<region>:<account>:<kind>/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arn {
    pub region: String,
    pub account: String,
    pub kind: ResourceKind,
    pub id: String,
}

impl Arn {
    pub fn new(account: &Account, kind: ResourceKind, id: impl Into<String>) -> Self {
        Arn {
            region: account.region.clone(),
            account: account.id.clone(),
            kind,
            id: id.into(),
        }
    }

    /// Parses an ARN of any onstage resource kind. Returns `None` for anything else;
    /// callers turn that into an error naming their field.
    pub fn parse(s: &str) -> Option<Arn> {
        let rest = s.strip_prefix("arn:aws:ivs:")?;
        let mut parts = rest.splitn(3, ':');
        let region = parts.next()?;
        let account = parts.next()?;
        let resource = parts.next()?;
        let (kind, id) = resource.split_once('/')?;
        let kind = ResourceKind::from_arn_segment(kind)?;
        let ok_region = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_account = !account.is_empty() && account.bytes().all(|b| b.is_ascii_digit());
        let ok_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        (ok_region && ok_account && ok_id).then(|| Arn {
            region: region.to_owned(),
            account: account.to_owned(),
            kind,
            id: id.to_owned(),
        })
    }

    /// Whether the caller may see this resource at all.
    pub fn is_in(&self, account: &Account) -> bool {
        self.account == account.id && self.region == account.region
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:aws:ivs:{}:{}:{}/{}",
            self.region,
            self.account,
            self.kind.arn_segment(),
            self.id
        )
    }
}

fn alphanumeric(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A resource id: 12 characters of `[a-zA-Z0-9]`.
pub fn new_resource_id() -> String {
    alphanumeric(12)
}

/// A participant id for a server-issued token: 12 alphanumerics.
pub fn new_participant_id() -> String {
    alphanumeric(12)
}

/// A stage session id: `st-` and 13 alphanumerics, 16 characters in all.
pub fn new_session_id() -> String {
    format!("st-{}", alphanumeric(13))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_round_trip() {
        let a = Account {
            id: "000000000000".into(),
            region: "us-east-1".into(),
        };
        let arn = Arn::new(&a, ResourceKind::PublicKey, "abcDEF123456");
        let s = arn.to_string();
        assert_eq!(
            s,
            "arn:aws:ivs:us-east-1:000000000000:public-key/abcDEF123456"
        );
        assert_eq!(Arn::parse(&s), Some(arn.clone()));
        assert!(arn.is_in(&a));
        assert!(!arn.is_in(&Account {
            id: "111111111111".into(),
            region: "us-east-1".into()
        }));
    }

    #[test]
    fn arn_rejects_foreign_shapes() {
        assert!(Arn::parse("arn:aws:ivs:us-east-1:0:channel/abc").is_none());
        assert!(Arn::parse("arn:aws:s3:::bucket").is_none());
        assert!(Arn::parse("arn:aws:ivs:us-east-1:12a:stage/abc").is_none());
        assert!(Arn::parse("arn:aws:ivs:us-east-1:1:stage/").is_none());
    }

    #[test]
    fn id_shapes() {
        assert_eq!(new_resource_id().len(), 12);
        let s = new_session_id();
        assert_eq!(s.len(), 16);
        assert!(s.starts_with("st-"));
        assert!(s[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
