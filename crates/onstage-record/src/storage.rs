//! Where recordings go: a storage configuration's bucket, as a directory under the
//! data directory (the default: nothing to set up) or a bucket of any
//! S3-compatible service. Both are an `object_store::ObjectStore`; an upload is
//! retried before the recording gives up, waiting on the server's [`Clock`]
//! between tries (so tests run the backoff in virtual time).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use onstage_stage::Clock;

/// An S3-compatible service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    /// `http(s)://host:port`; AWS's own endpoint for the region when absent.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key` (most
    /// self-hosted services want this).
    pub path_style: bool,
}

/// Where buckets are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageSettings {
    /// Each bucket is the directory `root/<bucket>`.
    Local {
        root: PathBuf,
    },
    S3(S3Settings),
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bucket name {0:?} cannot name a directory")]
    BadBucketName(String),
    #[error("bucket {bucket}: {message}")]
    Open { bucket: String, message: String },
    #[error("could not read {key} in bucket {bucket}: {message}")]
    Get {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("could not store {key} in bucket {bucket} after {attempts} attempts: {message}")]
    Put {
        bucket: String,
        key: String,
        attempts: u32,
        message: String,
    },
}

/// How often an upload is tried, and the waits between tries.
const ATTEMPTS: u32 = 4;
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// The buckets recordings write to, opened once each.
pub struct Buckets {
    settings: StorageSettings,
    /// What retries wait on.
    clock: Arc<dyn Clock>,
    open: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Buckets {
    pub fn new(settings: StorageSettings, clock: Arc<dyn Clock>) -> Self {
        Buckets {
            settings,
            clock,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &StorageSettings {
        &self.settings
    }

    /// The bucket `name`, opened (a local one is created).
    pub fn bucket(&self, name: &str) -> Result<Bucket, StorageError> {
        if let Some(store) = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(Bucket {
                name: name.to_owned(),
                store: store.clone(),
                clock: self.clock.clone(),
            });
        }
        let open_error = |e: &dyn std::fmt::Display| StorageError::Open {
            bucket: name.to_owned(),
            message: e.to_string(),
        };
        let store: Arc<dyn ObjectStore> = match &self.settings {
            StorageSettings::Local { root } => {
                // The API's bucket name pattern allows no '/', but '.' is allowed.
                if name.is_empty()
                    || name.starts_with('.')
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    return Err(StorageError::BadBucketName(name.to_owned()));
                }
                let dir = root.join(name);
                std::fs::create_dir_all(&dir).map_err(|e| open_error(&e))?;
                Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| open_error(&e))?)
            }
            StorageSettings::S3(s3) => {
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(name)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    .with_virtual_hosted_style_request(!s3.path_style);
                if let Some(endpoint) = &s3.endpoint {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                Arc::new(b.build().map_err(|e| open_error(&e))?)
            }
        };
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), store.clone());
        Ok(Bucket {
            name: name.to_owned(),
            store,
            clock: self.clock.clone(),
        })
    }
}

/// One open bucket.
#[derive(Clone)]
pub struct Bucket {
    name: String,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
}

impl Bucket {
    /// The object at `key`; None when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let error = |e: object_store::Error| StorageError::Get {
            bucket: self.name.clone(),
            key: key.to_owned(),
            message: e.to_string(),
        };
        match self
            .store
            .get_opts(&Path::from(key), GetOptions::default())
            .await
        {
            Ok(found) => Ok(Some(found.bytes().await.map_err(error)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    /// Stores `bytes` at `key`, trying again after a failure.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let path = Path::from(key);
        let payload = PutPayload::from(bytes);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            match self
                .store
                .put_opts(&path, payload.clone(), PutOptions::default())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = e.to_string();
                    tracing::debug!(bucket = %self.name, key, attempt, error = %e, "upload failed");
                    if let Some(wait) = BACKOFF.get(attempt as usize) {
                        let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                        let until = self.clock.now().saturating_add(wait);
                        self.clock.sleep_until(until).await;
                    }
                }
            }
        }
        Err(StorageError::Put {
            bucket: self.name.clone(),
            key: key.to_owned(),
            attempts: ATTEMPTS,
            message: last,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use onstage_stage::clock::{Sleep, SystemClock};
    use onstage_stage::time_fmt::UnixMillis;
    use tokio::sync::watch;

    use super::*;

    /// Virtual time: `now` moves only when the test moves it; each wait is
    /// recorded (how long, from when it was asked).
    struct TestClock {
        now: AtomicI64,
        moved: watch::Sender<UnixMillis>,
        waits: Mutex<Vec<i64>>,
    }

    impl TestClock {
        fn new() -> Arc<Self> {
            Arc::new(TestClock {
                now: AtomicI64::new(1_000_000),
                moved: watch::Sender::new(1_000_000),
                waits: Mutex::new(Vec::new()),
            })
        }

        fn advance(&self, ms: i64) {
            let now = self.now.fetch_add(ms, Ordering::SeqCst) + ms;
            self.moved.send_replace(now);
        }

        fn waits(&self) -> Vec<i64> {
            self.waits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> UnixMillis {
            self.now.load(Ordering::SeqCst)
        }

        fn sleep_until(&self, at: UnixMillis) -> Sleep {
            self.waits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(at - self.now());
            let mut moved = self.moved.subscribe();
            Box::pin(async move {
                let _ = moved.wait_for(|now| *now >= at).await;
            })
        }
    }

    #[tokio::test]
    async fn a_failing_upload_is_tried_four_times_over_virtual_seconds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = TestClock::new();
        let buckets = Buckets::new(
            StorageSettings::Local {
                root: dir.path().to_owned(),
            },
            clock.clone(),
        );
        let bucket = buckets.bucket("b").expect("opens");
        // A file where a directory must be: every upload under it fails.
        bucket.put("a", b"x".to_vec()).await.expect("stored");
        let upload = tokio::spawn(async move { bucket.put("a/b.json", b"{}".to_vec()).await });
        let wall = std::time::Instant::now();
        for (n, ms) in [200, 1_000, 3_000].into_iter().enumerate() {
            // Wait (in real time, briefly) until the upload sleeps on the clock.
            while clock.waits().len() <= n {
                tokio::task::yield_now().await;
                assert!(wall.elapsed() < Duration::from_secs(10), "no retry wait");
            }
            assert!(!upload.is_finished(), "gave up after {} attempts", n + 1);
            clock.advance(ms);
        }
        let result = upload.await.expect("the upload's task");
        assert!(
            matches!(result, Err(StorageError::Put { attempts: 4, .. })),
            "{result:?}"
        );
        assert_eq!(clock.waits(), [200, 1_000, 3_000]);
        assert!(
            wall.elapsed() < Duration::from_secs(2),
            "waited on the wall clock"
        );
    }

    #[tokio::test]
    async fn a_local_bucket_is_a_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let buckets = Buckets::new(
            StorageSettings::Local {
                root: dir.path().to_owned(),
            },
            Arc::new(SystemClock),
        );
        let bucket = buckets.bucket("my-bucket").expect("opens");
        bucket
            .put("a/b/c.json", b"{}".to_vec())
            .await
            .expect("stored");
        let read = std::fs::read(dir.path().join("my-bucket/a/b/c.json")).expect("file");
        assert_eq!(read, b"{}");
        assert!(matches!(
            buckets.bucket(".."),
            Err(StorageError::BadBucketName(_))
        ));
    }
}
