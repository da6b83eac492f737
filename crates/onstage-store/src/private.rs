//! The data directory holds the token-signing private key (in the database): only
//! the user running onstage may read it. The directory is `0700`, the database and
//! SQLite's `-wal` and `-shm` files `0600`, whether onstage creates them or finds
//! them already there with looser permissions (then it tightens them and says so in
//! the log).
//!
//! SQLite creates `-wal` and `-shm` with the permissions of the database file, so
//! creating that file `0600` before SQLite opens it is what keeps the others private.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use onstage_stage::StoreError;

/// The data directory's mode.
pub const DIR_MODE: u32 = 0o700;
/// The database files' mode.
pub const FILE_MODE: u32 = 0o600;
/// Files beside the database that SQLite keeps in WAL mode.
pub const COMPANION_SUFFIXES: [&str; 2] = ["-wal", "-shm"];

/// Creates (or tightens) the data directory and the database file before SQLite
/// opens it.
pub fn prepare(dir: &Path, db: &Path) -> Result<(), StoreError> {
    let failed = |what: &str, path: &Path, e: io::Error| {
        StoreError::Backend(format!("cannot {what} {}: {e}", path.display()))
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| failed("create data directory", dir, e))?;
    tighten(dir, DIR_MODE).map_err(|e| failed("restrict the permissions of", dir, e))?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed("create", db, e)),
    }
    tighten(db, FILE_MODE).map_err(|e| failed("restrict the permissions of", db, e))?;
    for suffix in COMPANION_SUFFIXES {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let companion = Path::new(&name);
        match tighten(companion, FILE_MODE) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("restrict the permissions of", companion, e)),
        }
    }
    Ok(())
}

/// Takes away every permission beyond `mode` (group's and others' in practice);
/// logs when there was something to take away.
fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let current = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if current & !mode == 0 {
        return Ok(());
    }
    let tightened = current & mode;
    fs::set_permissions(path, Permissions::from_mode(tightened))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{current:04o}"),
        now = format!("{tightened:04o}"),
        "tightened permissions: the data directory holds the token-signing key"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStore;
    use onstage_stage::Store;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn a_new_data_directory_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new").join("data");
        let store = SqliteStore::open(&dir).await.unwrap();
        // A write, so that the WAL and its index exist.
        store.secret("test-secret", b"k").await.unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        let db = dir.join(crate::sqlite::DATABASE_FILE);
        assert_eq!(mode(&db), FILE_MODE);
        for suffix in COMPANION_SUFFIXES {
            let companion = dir.join(format!("{}{suffix}", crate::sqlite::DATABASE_FILE));
            assert!(companion.exists(), "{} missing", companion.display());
            assert_eq!(mode(&companion), FILE_MODE, "{}", companion.display());
        }
    }

    #[tokio::test]
    async fn an_existing_loose_data_directory_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let store = SqliteStore::open(&dir).await.unwrap();
        store.secret("test-secret", b"k").await.unwrap();
        drop(store);
        // As an older onstage (or a careless operator) left it.
        let db = dir.join(crate::sqlite::DATABASE_FILE);
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&db, Permissions::from_mode(0o644)).unwrap();
        let mut loose = vec![db.clone()];
        for suffix in COMPANION_SUFFIXES {
            let companion = dir.join(format!("{}{suffix}", crate::sqlite::DATABASE_FILE));
            if companion.exists() {
                fs::set_permissions(&companion, Permissions::from_mode(0o666)).unwrap();
                loose.push(companion);
            }
        }
        let store = SqliteStore::open(&dir).await.unwrap();
        store.secret("test-secret", b"k").await.unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        for file in &loose {
            assert_eq!(mode(file), FILE_MODE, "{}", file.display());
        }
        for suffix in COMPANION_SUFFIXES {
            let companion = dir.join(format!("{}{suffix}", crate::sqlite::DATABASE_FILE));
            assert_eq!(mode(&companion), FILE_MODE, "{}", companion.display());
        }
    }
}
