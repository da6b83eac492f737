//! The join page: a plain HTML + JavaScript client, embedded in the binary, that
//! joins a stage with a participant token (`GET /join?token=…`, or a form to paste
//! one). It publishes the camera and microphone over WHIP, follows the stage's events
//! socket, subscribes to every other publisher and shows them live.
//!
//! The API's `Content-Security-Policy: default-src 'self'` forbids inline scripts
//! and styles, so the script and the stylesheet are separate same-origin files.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::headers;

const HTML: &str = include_str!("../assets/join.html");
const JS: &str = include_str!("../assets/join.js");
const CSS: &str = include_str!("../assets/join.css");
const ICON: &str = include_str!("../assets/icon.svg");

/// `GET /join`, `/join/join.js`, `/join/join.css`, `/join/icon.svg`, with the API's
/// response headers. Stateless; merge it into the API router:
/// `onstage_api::router(state).merge(onstage_api::join::join_router())`.
pub fn join_router() -> Router {
    Router::new()
        .route(
            "/join",
            get(|| async { asset("text/html; charset=utf-8", HTML) }),
        )
        .route(
            "/join/join.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/join/join.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/join/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
        .layer(headers::cors(&[]))
        .layer(axum::middleware::from_fn_with_state(
            headers::ResponseHeaders::ivs(),
            headers::response_headers,
        ))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(CONTENT_TYPE, content_type)], body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, String, String, String) {
        let response = join_router()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let content_type = header(CONTENT_TYPE);
        let csp = header(http::header::CONTENT_SECURITY_POLICY);
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (
            status,
            content_type,
            csp,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets() {
        let (status, ct, csp, body) = get("/join?token=abc.def.ghi").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, "text/html; charset=utf-8");
        assert_eq!(csp, "default-src 'self'; upgrade-insecure-requests;");
        assert!(body.contains(r#"<script src="/join/join.js" defer></script>"#));
        assert!(body.contains(r#"href="/join/join.css""#));

        let (status, ct, _, body) = get("/join/join.js").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, "text/javascript; charset=utf-8");
        assert!(body.contains("window.onstage"));

        let (status, ct, _, _) = get("/join/join.css").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, "text/css; charset=utf-8");

        let (status, ct, _, _) = get("/join/icon.svg").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, "image/svg+xml");
    }

    /// The CSP forbids inline code: the page must not depend on any.
    #[test]
    fn page_has_no_inline_script_or_style() {
        assert!(!HTML.contains("<style"));
        assert!(!HTML.contains(" style="));
        // No event-handler attributes (onclick= and the like).
        for (i, _) in HTML.match_indices(" on") {
            let name: String = HTML[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            assert!(
                !HTML[i + 1 + name.len()..].starts_with('='),
                "inline handler {name}"
            );
        }
        assert_eq!(HTML.matches("<script").count(), 1);
        assert!(HTML.contains("<script src="));
    }
}
