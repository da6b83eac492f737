//! The participant endpoints of BEHAVIOUR §4: how participants reach a stage.
//!
//! - `POST /whip` — WHIP publish (RFC 9725): `Authorization: Bearer <token>`,
//!   `Content-Type: application/sdp`, the offer as body; `201 Created` with the
//!   answer and a `Location` to `DELETE` when leaving.
//! - `POST /whip/subscribe/{participantId}` — the same with a recvonly offer, for
//!   that publisher's audio and video.
//! - `DELETE /whip/resource/{id}` — the `Location` of either (absolute, under the
//!   stage's `endpoints.whip`, so a web app on another origin can use it as given):
//!   ends that connection.
//! - `GET /events/{topic}` — the stage-events WebSocket, the token as its
//!   subprotocol: `STAGE_STATE` on connect and on every change, `PONG` for `PING`.
//!
//! Participant tokens authenticate these requests, so they are not SigV4-signed and
//! never pass the API's signature check; they carry the same response headers (and
//! CORS preflight answers) as the API. A refusal is plain text with the status of
//! BEHAVIOUR §3. What a connection may do is the live plane's decision; this module only
//! speaks HTTP and WebSocket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use onstage_stage::LivePlane;
use onstage_stage::live::{
    Accepted, EventsClose, EventsSubscription, EventsUpdate, Refusal, StageState,
};
use serde_json::{Value, json};

use crate::headers;

/// Where WHIP resources live; the `Location` of an accepted publish or subscribe.
pub const WHIP_RESOURCE_PATH: &str = "/whip/resource";
/// Largest SDP offer accepted. Browser offers are a few KB; this leaves room for
/// many codecs and simulcast without letting anyone post megabytes.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// How often the server pings an idle events socket.
const EVENTS_PING_INTERVAL: Duration = Duration::from_secs(15);
/// An events socket that sends nothing (not even a pong) for this long is dropped.
const EVENTS_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Largest message a client may send on the events socket (it only ever sends PING).
const MAX_EVENTS_MESSAGE_BYTES: usize = 4096;

/// The participant endpoints, to merge into the API router:
/// `onstage_api::router(state).merge(onstage_api::participant_router(live))`.
pub fn participant_router(live: Arc<LivePlane>) -> Router {
    Router::new()
        .route("/whip", post(publish))
        .route("/whip/subscribe/{participant_id}", post(subscribe))
        .route("/whip/resource/{resource_id}", delete(end_connection))
        .route("/events/{topic}", get(events))
        .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .with_state(live)
        .layer(axum::middleware::from_fn(headers::response_headers))
}

async fn publish(
    State(live): State<Arc<LivePlane>>,
    request_headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (token, offer) = match whip_request(&request_headers, &body) {
        Ok(parts) => parts,
        Err((status, message)) if status == StatusCode::UNAUTHORIZED => {
            return unauthorized(message);
        }
        Err((status, message)) => return plain(status, message),
    };
    let outcome = live
        .publish(token, offer, user_agent(&request_headers))
        .await;
    answer("publish", outcome)
}

async fn subscribe(
    State(live): State<Arc<LivePlane>>,
    Path(publisher_id): Path<String>,
    request_headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (token, offer) = match whip_request(&request_headers, &body) {
        Ok(parts) => parts,
        Err((status, message)) if status == StatusCode::UNAUTHORIZED => {
            return unauthorized(message);
        }
        Err((status, message)) => return plain(status, message),
    };
    let outcome = live
        .subscribe(token, publisher_id, offer, user_agent(&request_headers))
        .await;
    answer("subscribe", outcome)
}

async fn end_connection(
    State(live): State<Arc<LivePlane>>,
    Path(resource_id): Path<String>,
) -> Response {
    if live.end_connection(&resource_id).await {
        StatusCode::OK.into_response()
    } else {
        plain(
            StatusCode::NOT_FOUND,
            "no such WHIP resource (it may have ended already)",
        )
    }
}

async fn events(
    State(live): State<Arc<LivePlane>>,
    Path(topic): Path<String>,
    request_headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Browsers can only pass the token as a subprotocol; other clients may use the
    // Authorization header. Of several subprotocols, the token is the one shaped
    // like a JWT.
    let from_protocol = upgrade
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .find(|p| p.split('.').count() == 3)
        .map(str::to_owned);
    let Some(token) = from_protocol
        .clone()
        .or_else(|| bearer_token(&request_headers))
    else {
        return unauthorized("a participant token is required as the WebSocket subprotocol");
    };
    let subscription = match live
        .open_events(token, topic, user_agent(&request_headers))
        .await
    {
        Ok(s) => s,
        Err(refusal) => return refused("events", refusal),
    };
    count("events", "accepted");
    let mut upgrade = upgrade.max_message_size(MAX_EVENTS_MESSAGE_BYTES);
    if let Some(protocol) = from_protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        upgrade.set_selected_protocol(protocol);
    }
    upgrade.on_upgrade(move |socket| run_events_socket(socket, subscription))
}

/// Speaks to one events socket until either side ends it. Dropping the
/// subscription at the end closes the connection on the stage.
async fn run_events_socket(mut socket: WebSocket, mut subscription: EventsSubscription) {
    let current = subscription.states().borrow_and_update().clone();
    if socket
        .send(Message::Text(stage_state_message(&current).into()))
        .await
        .is_err()
    {
        return;
    }
    let mut ping = tokio::time::interval(EVENTS_PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            update = subscription.next_update() => match update {
                EventsUpdate::State(state) => {
                    if socket.send(Message::Text(stage_state_message(&state).into())).await.is_err() {
                        break;
                    }
                }
                EventsUpdate::Closed(why) => {
                    let _ = socket.send(Message::Close(Some(close_frame(&why)))).await;
                    break;
                }
            },
            received = socket.recv() => match received {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    if is_ping(text.as_str()) && socket.send(Message::Text(r#"{"type":"PONG"}"#.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > EVENTS_IDLE_TIMEOUT {
                    let frame = CloseFrame { code: 4008, reason: "no message from the client for too long".into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break;
                }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// `{"type":"STAGE_STATE","payload":{"stageId":…,"participants":[{"id","userId","attributes","isPublishing"}]}}`
pub fn stage_state_message(state: &StageState) -> String {
    let participants: Vec<Value> = state
        .participants
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "userId": p.user_id,
                "attributes": p.attributes,
                "isPublishing": p.is_publishing,
            })
        })
        .collect();
    json!({
        "type": "STAGE_STATE",
        "payload": { "stageId": state.stage_id, "participants": participants },
    })
    .to_string()
}

fn is_ping(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .is_ok_and(|v| v.get("type").and_then(Value::as_str) == Some("PING"))
}

/// Close codes of the events socket: 4001 replaced by a newer socket, 4003
/// disconnected by DisconnectParticipant (reason as given), 4004 stage deleted,
/// 4008 idle, 1001 server shutting down.
fn close_frame(why: &EventsClose) -> CloseFrame {
    let (code, reason) = match why {
        EventsClose::Replaced => (4001, "replaced by a newer connection".to_owned()),
        EventsClose::Disconnected(reason) => (
            4003,
            reason.clone().unwrap_or_else(|| "disconnected".to_owned()),
        ),
        EventsClose::StageDeleted => (4004, "the stage was deleted".to_owned()),
        EventsClose::ServerShutdown => (1001, "the server is shutting down".to_owned()),
    };
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    }
}

// ----- HTTP plumbing ----------------------------------------------------------

/// The token and the offer of a WHIP POST, or the status and reason refusing it.
fn whip_request(
    request_headers: &HeaderMap,
    body: &Bytes,
) -> Result<(String, String), (StatusCode, &'static str)> {
    let token = bearer_token(request_headers).ok_or((
        StatusCode::UNAUTHORIZED,
        "a participant token is required: Authorization: Bearer <token>",
    ))?;
    let content_type = request_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if content_type.as_deref() != Some("application/sdp") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/sdp",
        ));
    }
    let offer = std::str::from_utf8(body)
        .map_err(|_| (StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8 text"))?
        .to_owned();
    if offer.trim().is_empty() {
        return Err((StatusCode::BAD_REQUEST, "the request has no SDP offer"));
    }
    Ok((token, offer))
}

fn bearer_token(request_headers: &HeaderMap) -> Option<String> {
    let value = request_headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn user_agent(request_headers: &HeaderMap) -> Option<String> {
    request_headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `201 Created` with the SDP answer and the WHIP resource, or the refusal.
fn answer(kind: &'static str, outcome: Result<Accepted, Refusal>) -> Response {
    match outcome {
        Ok(accepted) => {
            count(kind, "accepted");
            let location = resource_url(&accepted.whip_endpoint, &accepted.resource_id);
            let mut response = (StatusCode::CREATED, accepted.answer_sdp).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(location) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, location);
            }
            response
        }
        Err(refusal) => refused(kind, refusal),
    }
}

/// `{endpoints.whip}/resource/{id}`; the server's path when the endpoint is not a
/// URL it can extend.
fn resource_url(whip_endpoint: &str, resource_id: &str) -> String {
    match whip_endpoint.strip_suffix("/whip") {
        Some(base) if base.starts_with("http://") || base.starts_with("https://") => {
            format!("{base}{WHIP_RESOURCE_PATH}/{resource_id}")
        }
        _ => format!("{WHIP_RESOURCE_PATH}/{resource_id}"),
    }
}

fn refused(kind: &'static str, refusal: Refusal) -> Response {
    let status = crate::error::refusal_status(&refusal.kind);
    count(kind, status.as_str());
    if status == StatusCode::UNAUTHORIZED {
        return unauthorized(&refusal.message);
    }
    plain(status, &refusal.message)
}

fn unauthorized(message: &str) -> Response {
    let mut response = plain(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="onstage", error="invalid_token""#),
    );
    response
}

fn plain(status: StatusCode, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn count(kind: &'static str, outcome: &str) {
    metrics::counter!("onstage_participant_connections_total", "kind" => kind, "outcome" => outcome.to_owned())
        .increment(1);
}
