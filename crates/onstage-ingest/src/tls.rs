//! RTMPS: the TLS acceptor from a configured certificate and key (PEM), or from a
//! development certificate generated on first start into the data directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    #[error("cannot generate the development certificate: {0}")]
    Generate(String),
}

/// A TLS acceptor for RTMPS from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_error = |path: &Path, e: &dyn std::fmt::Display| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, &e))?;
    if chain.is_empty() {
        return Err(file_error(cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The development certificate's files in `dir`, made on first use: self-signed for
/// `localhost`, `127.0.0.1` and `::1`, the key written `0600`. Encoders must be told
/// to accept it (ffmpeg does not verify by default; OBS needs the certificate
/// trusted).
pub fn development_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("rtmps-dev-cert.pem");
    let key_path = dir.join("rtmps-dev-key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, generated.cert.pem()).map_err(|e| TlsError::File {
        path: cert_path.clone(),
        message: e.to_string(),
    })?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let error = |e: std::io::Error| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(error)?;
    file.write_all(bytes).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_certificate_is_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = development_certificate(dir.path()).expect("generated");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let first = fs::read(&cert).expect("cert");
        let again = development_certificate(dir.path()).expect("kept");
        assert_eq!(fs::read(&again.0).expect("cert"), first);
        acceptor(&cert, &key).expect("a usable TLS configuration");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope.pem");
        let err = acceptor(&missing, &missing).err().expect("refused");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
