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

/// The secret part of an ingest stream key: 32 alphanumerics (190 bits), always at
/// random, whatever the [`IdSource`]: a key must never be guessable.
pub fn new_stream_key_secret() -> String {
    alphanumeric(32)
}

fn alphanumeric(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Where new ids come from. The server draws them at random ([`RandomIds`]); tests
/// and tools that want to know them in advance use [`SequentialIds`]. Every id has
/// the shape IVS gives it, whatever the source.
pub trait IdSource: Send + Sync + std::fmt::Debug + 'static {
    /// A resource id (stage, public key, storage or encoder configuration): 12
    /// characters of `[a-zA-Z0-9]`.
    fn resource_id(&self) -> String;
    /// A participant id for a server-issued token: 12 alphanumerics.
    fn participant_id(&self) -> String;
    /// A stage session id: `st-` and 13 alphanumerics, 16 characters in all.
    fn session_id(&self) -> String;
}

/// Random ids: what the server uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn resource_id(&self) -> String {
        alphanumeric(12)
    }
    fn participant_id(&self) -> String {
        alphanumeric(12)
    }
    fn session_id(&self) -> String {
        format!("st-{}", alphanumeric(13))
    }
}

/// Ids numbered in the order they are asked for, one counter for all kinds:
/// `res000000001`, `par000000002`, `st-ses000000003`, … Two sources that must not
/// collide (two control planes on one store) share one `Arc<SequentialIds>`.
#[derive(Debug, Default)]
pub struct SequentialIds {
    next: std::sync::atomic::AtomicU64,
}

impl SequentialIds {
    pub fn new() -> Self {
        Self::default()
    }

    fn next(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

impl IdSource for SequentialIds {
    fn resource_id(&self) -> String {
        format!("res{:09}", self.next())
    }
    fn participant_id(&self) -> String {
        format!("par{:09}", self.next())
    }
    fn session_id(&self) -> String {
        format!("st-ses{:010}", self.next())
    }
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
    fn sequential_ids_have_the_shapes_of_random_ones() {
        let ids = SequentialIds::new();
        let (r, p, s) = (ids.resource_id(), ids.participant_id(), ids.session_id());
        assert_eq!(
            (r.as_str(), p.as_str(), s.as_str()),
            ("res000000001", "par000000002", "st-ses0000000003")
        );
        for random in [RandomIds.resource_id(), RandomIds.participant_id()] {
            assert_eq!(random.len(), r.len());
        }
        assert_eq!(RandomIds.session_id().len(), s.len());
        assert!(
            r.chars()
                .chain(p.chars())
                .all(|c| c.is_ascii_alphanumeric())
        );
    }

    #[test]
    fn id_shapes() {
        assert_eq!(RandomIds.resource_id().len(), 12);
        let s = RandomIds.session_id();
        assert_eq!(s.len(), 16);
        assert!(s.starts_with("st-"));
        assert!(s[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
