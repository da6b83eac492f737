//! Plain HTTP/1.1 requests for WHIP signaling (token-authenticated, not SigV4):
//! one connection per request, which is what a joining client does too.

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An `http://` URL split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// `host:port` to connect to.
    pub connect_to: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> anyhow::Result<Url> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("only http:// URLs are supported, not {url:?}");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in {url:?}");
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !authority.ends_with(']');
        let connect_to = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority: authority.to_owned(),
            connect_to,
            path: path.to_owned(),
        })
    }

    /// Resolves a `Location` header (absolute, or a path on this URL's origin).
    pub fn join(&self, location: &str) -> anyhow::Result<Url> {
        if location.starts_with("http://") {
            Url::parse(location)
        } else if location.starts_with('/') {
            Ok(Url {
                path: location.to_owned(),
                ..self.clone()
            })
        } else {
            bail!("unsupported Location {location:?}")
        }
    }
}

pub struct Response {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: Bytes,
}

/// Sends one request with an optional bearer token and body.
pub async fn request(
    method: Method,
    url: &Url,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Bytes,
) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(&url.connect_to)
        .await
        .with_context(|| format!("could not connect to {}", url.connect_to))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the answer is read and the sender dropped.
        let _ = connection.await;
    });
    let mut builder = Request::builder()
        .method(method)
        .uri(&url.path)
        .header(HOST, &url.authority);
    if let Some(token) = bearer {
        builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(ct) = content_type {
        builder = builder.header(CONTENT_TYPE, ct);
    }
    let response = sender.send_request(builder.body(Full::new(body))?).await?;
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        location,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins_urls() -> anyhow::Result<()> {
        let u = Url::parse("http://127.0.0.1:7700/whip")?;
        assert_eq!(
            (u.connect_to.as_str(), u.path.as_str()),
            ("127.0.0.1:7700", "/whip")
        );
        assert_eq!(Url::parse("http://example")?.connect_to, "example:80");
        assert_eq!(u.join("/whip/resource/x")?.path, "/whip/resource/x");
        assert_eq!(u.join("http://h:1/r")?.connect_to, "h:1");
        assert!(Url::parse("https://x").is_err());
        Ok(())
    }
}
