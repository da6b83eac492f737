//! The participant endpoints of BEHAVIOUR §4: how participants reach a stage.
//!
//! - `POST /whip/publish/{participantId}` (the form IVS's client libraries use; the
//!   id must be the token's `jti`) and `POST /whip` — WHIP publish (RFC 9725):
//!   `Authorization: Bearer <token>`, `Content-Type: application/sdp`, the offer as
//!   body; `201 Created` with the answer and a `Location` to `DELETE` when leaving.
//! - `POST /whip/subscribe/{participantId}` — the same with a recvonly offer, for
//!   that publisher's audio and video.
//! - `DELETE /whip/resource/{id}` — the `Location` of either (absolute, under the
//!   stage's `endpoints.whip`, so a web app on another origin can use it as given):
//!   ends that connection.
//! - `GET /events?topic={stageId}/publishers&error_over_ws=1` (the client
//!   libraries' form) and `GET /events/{topic}` — the stage-events WebSocket, the
//!   token as its subprotocol: `STAGE_STATE` (numbered per socket) on connect and on
//!   every change; `PONG` for `PING`; `SET_STATE` (mute) and `EXCHANGE_TOKEN` from
//!   the client; `aws:ivs:DISCONNECT` before the server closes it, and with
//!   `error_over_ws=1` a refused token is answered `aws:ivs:JOIN_ERROR` on the socket.
//!
//! Participant tokens authenticate these requests, so they are not SigV4-signed and
//! never pass the API's signature check; they carry the same response headers (and
//! CORS preflight answers) as the API. A refusal is plain text with the status of
//! BEHAVIOUR §3. What a connection may do is the live plane's decision; this module only
//! speaks HTTP and WebSocket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use onstage_stage::LivePlane;
use onstage_stage::live::{
    Accepted, EventsClose, EventsSubscription, EventsUpdate, Refusal, StageState,
};
use onstage_stage::token;
use serde::{Deserialize, Serialize};
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
/// Largest message a client may send on the events socket: PING, SET_STATE, and
/// EXCHANGE_TOKEN with a token (attributes up to 1 KB).
const MAX_EVENTS_MESSAGE_BYTES: usize = 8192;
/// Request headers IVS's client libraries send, allowed in CORS preflights of the
/// participant endpoints (BEHAVIOUR §4.4).
const STAGES_REQUEST_HEADERS: [&str; 8] = [
    "x-stages-platform",
    "x-stages-request-id",
    "x-stages-sdk",
    "x-stages-session-id",
    "x-stages-trace-id",
    "x-stages-whip-version",
    "x-stages-options",
    "x-stages-initial-layer-pref",
];
/// Response headers a participant endpoint's caller may read beyond the API's.
const STAGES_EXPOSED_HEADERS: &str = "Link";

/// The participant endpoints, to merge into the API router:
/// `onstage_api::router(state).merge(onstage_api::participant_router(live))`.
/// Their CORS is the API's widened for web apps using IVS's client libraries: their
/// `X-Stages-*` request headers pass the preflight, and `Link` can be read.
pub fn participant_router(live: Arc<LivePlane>) -> Router {
    Router::new()
        .route("/whip", post(publish))
        .route("/whip/publish/{participant_id}", post(publish_as))
        .route("/whip/subscribe/{participant_id}", post(subscribe))
        .route("/whip/resource/{resource_id}", delete(end_connection))
        .route("/events", get(events_by_query))
        .route("/events/{topic}", get(events))
        .with_state(live)
        .layer(headers::cors(&STAGES_REQUEST_HEADERS))
        .layer(axum::middleware::from_fn_with_state(
            headers::ResponseHeaders::exposing(STAGES_EXPOSED_HEADERS),
            headers::response_headers,
        ))
}

async fn publish(
    State(live): State<Arc<LivePlane>>,
    request_headers: HeaderMap,
    body: Body,
) -> Response {
    let (token, offer) = match whip_request(&request_headers, body).await {
        Ok(parts) => parts,
        Err(refusal) => return whip_refused(refusal),
    };
    let outcome = live
        .publish(token, offer, user_agent(&request_headers))
        .await;
    answer("publish", outcome)
}

async fn publish_as(
    State(live): State<Arc<LivePlane>>,
    Path(participant_id): Path<String>,
    request_headers: HeaderMap,
    body: Body,
) -> Response {
    let (token, offer) = match whip_request(&request_headers, body).await {
        Ok(parts) => parts,
        Err(refusal) => return whip_refused(refusal),
    };
    let outcome = live
        .publish_as(token, participant_id, offer, user_agent(&request_headers))
        .await;
    answer("publish", outcome)
}

async fn subscribe(
    State(live): State<Arc<LivePlane>>,
    Path(publisher_id): Path<String>,
    request_headers: HeaderMap,
    body: Body,
) -> Response {
    let (token, offer) = match whip_request(&request_headers, body).await {
        Ok(parts) => parts,
        Err(refusal) => return whip_refused(refusal),
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
    open_events(live, topic, false, request_headers, upgrade).await
}

/// The query of `GET {events_url}?error_over_ws=1&topic={stageId}/publishers&traceid=…`.
#[derive(Deserialize)]
struct EventsQuery {
    topic: Option<String>,
    error_over_ws: Option<String>,
}

async fn events_by_query(
    State(live): State<Arc<LivePlane>>,
    Query(query): Query<EventsQuery>,
    request_headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(topic) = query.topic.filter(|t| !t.is_empty()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "topic: the stage id is required (?topic={stageId}/publishers)",
        );
    };
    let stage_id = topic
        .strip_suffix("/publishers")
        .unwrap_or(&topic)
        .to_owned();
    let over_ws = query.error_over_ws.as_deref() == Some("1");
    open_events(live, stage_id, over_ws, request_headers, upgrade).await
}

/// Opens an events socket for `stage_id`. With `errors_over_ws` a refused token is
/// still upgraded, told `aws:ivs:JOIN_ERROR` and closed, as IVS's client libraries
/// expect; otherwise it is refused in HTTP.
async fn open_events(
    live: Arc<LivePlane>,
    stage_id: String,
    errors_over_ws: bool,
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
    let mut upgrade = upgrade
        .max_message_size(MAX_EVENTS_MESSAGE_BYTES)
        .max_frame_size(MAX_EVENTS_MESSAGE_BYTES);
    if let Some(protocol) = from_protocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        upgrade.set_selected_protocol(protocol);
    }
    let outcome = match from_protocol.or_else(|| bearer_token(&request_headers)) {
        None => Err(None),
        Some(token) => live
            .open_events(token, stage_id, user_agent(&request_headers))
            .await
            .map_err(Some),
    };
    match outcome {
        Ok(subscription) => {
            count("events", "accepted");
            upgrade.on_upgrade(move |socket| run_events_socket(socket, subscription))
        }
        Err(refusal) if errors_over_ws => {
            let status = refusal
                .as_ref()
                .map_or(401, |r| crate::error::refusal_status(&r.kind).as_u16());
            count("events", &status.to_string());
            let message = join_error_message(refusal.as_ref());
            upgrade.on_upgrade(move |mut socket| async move {
                let _ = socket.send(Message::Text(message.into())).await;
                let frame = CloseFrame {
                    code: 4000 + status,
                    reason: "join refused".into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
            })
        }
        Err(None) => unauthorized("a participant token is required as the WebSocket subprotocol"),
        Err(Some(refusal)) => refused("events", refusal),
    }
}

/// `{"type":"aws:ivs:JOIN_ERROR","code":<HTTP status of the refusal>,"errorCode":…,"message":…,"fatal":true}`
fn join_error_message(refusal: Option<&Refusal>) -> String {
    let (code, error_code, message) = match refusal {
        Some(r) => (
            crate::error::refusal_status(&r.kind).as_u16(),
            r.error_code().as_str(),
            r.message.as_str(),
        ),
        None => (
            401,
            "INVALID_INPUT",
            "a participant token is required as the WebSocket subprotocol",
        ),
    };
    json!({
        "type": "aws:ivs:JOIN_ERROR",
        "code": code,
        "errorCode": error_code,
        "message": message,
        "fatal": true,
    })
    .to_string()
}

/// What a client sends on the events socket.
enum ClientMessage {
    Ping,
    SetState {
        audio_muted: bool,
        video_stopped: bool,
    },
    ExchangeToken(String),
    /// Something else: ignored (clients may send types this server does not know).
    Other,
}

/// Reads a client message; a known type with a bad member is an error naming it.
fn client_message(text: &str) -> Result<ClientMessage, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| "the message is not a JSON object".to_owned())?;
    let boolean = |name: &str| match value.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("SET_STATE: {name} must be true or false")),
    };
    match value.get("type").and_then(Value::as_str) {
        Some("PING") => Ok(ClientMessage::Ping),
        Some("SET_STATE") => Ok(ClientMessage::SetState {
            audio_muted: boolean("audioMuted")?,
            video_stopped: boolean("videoStopped")?,
        }),
        Some("EXCHANGE_TOKEN") => match value.get("token").and_then(Value::as_str) {
            Some(token) if !token.is_empty() => Ok(ClientMessage::ExchangeToken(token.to_owned())),
            _ => Err("EXCHANGE_TOKEN: token must be a participant token".to_owned()),
        },
        _ => Ok(ClientMessage::Other),
    }
}

/// Speaks to one events socket until either side ends it. Dropping the
/// subscription at the end closes the connection on the stage.
async fn run_events_socket(mut socket: WebSocket, mut subscription: EventsSubscription) {
    let mut sequence: u64 = 0;
    let current = subscription.states().borrow_and_update().clone();
    sequence += 1;
    if socket
        .send(Message::Text(
            stage_state_numbered(&current, sequence).into(),
        ))
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
                    sequence += 1;
                    if socket.send(Message::Text(stage_state_numbered(&state, sequence).into())).await.is_err() {
                        break;
                    }
                }
                EventsUpdate::Closed(why) => {
                    let (frame, name) = close_frame(&why);
                    let goodbye = json!({
                        "type": "aws:ivs:DISCONNECT",
                        "code": frame.code,
                        "reason": name,
                        "message": frame.reason.as_str(),
                    });
                    let _ = socket.send(Message::Text(goodbye.to_string().into())).await;
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break;
                }
            },
            received = socket.recv() => match received {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    let reply = match client_message(text.as_str()) {
                        Ok(ClientMessage::Ping) => Some(r#"{"type":"PONG"}"#.to_owned()),
                        Ok(ClientMessage::SetState { audio_muted, video_stopped }) => {
                            subscription.set_client_state(audio_muted, video_stopped).await;
                            None
                        }
                        Ok(ClientMessage::ExchangeToken(token)) => {
                            Some(match subscription.exchange_token(token).await {
                                Ok(()) => json!({"type": "TOKEN_EXCHANGED"}).to_string(),
                                Err(e) => json!({"type": "aws:ivs:EXCHANGE_TOKEN_ERROR", "message": e.to_string()}).to_string(),
                            })
                        }
                        Ok(ClientMessage::Other) => None,
                        Err(message) => Some(json!({"type": "ERROR", "message": message}).to_string()),
                    };
                    if let Some(reply) = reply && socket.send(Message::Text(reply.into())).await.is_err() {
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

/// `{"type":"STAGE_STATE","payload":{"sequenceNumber":n,"stageId":…,"participants":[{"id","userId","attributes","isPublishing","audioMuted","videoStopped"}]}}`.
/// Everything after the sequence number is rendered once per state and shared by
/// every socket; each socket only writes its own prefix before it.
pub fn stage_state_numbered(state: &StageState, sequence: u64) -> String {
    const PREFIX: &str = r#"{"type":"STAGE_STATE","payload":{"sequenceNumber":"#;
    let rest = state.rendered.get_or_render(|| stage_state_rest(state));
    let mut message = String::with_capacity(PREFIX.len() + 21 + rest.len());
    message.push_str(PREFIX);
    message.push_str(&sequence.to_string());
    message.push(',');
    message.push_str(&rest);
    message
}

/// A STAGE_STATE without a sequence number (for tools and tests).
pub fn stage_state_message(state: &StageState) -> String {
    let rest = state.rendered.get_or_render(|| stage_state_rest(state));
    format!(r#"{{"type":"STAGE_STATE","payload":{{{rest}"#)
}

/// `"stageId":…,"participants":[…]}}`: the payload's members after the sequence
/// number, closing the payload and the message.
fn stage_state_rest(state: &StageState) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Participant<'a> {
        id: &'a str,
        user_id: Option<&'a str>,
        attributes: &'a onstage_stage::model::Attributes,
        is_publishing: bool,
        audio_muted: bool,
        video_stopped: bool,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload<'a> {
        stage_id: &'a str,
        participants: Vec<Participant<'a>>,
    }
    let payload = Payload {
        stage_id: &state.stage_id,
        participants: state
            .participants
            .iter()
            .map(|p| Participant {
                id: &p.id,
                user_id: p.user_id.as_deref(),
                attributes: &p.attributes,
                is_publishing: p.is_publishing,
                audio_muted: p.audio_muted,
                video_stopped: p.video_stopped,
            })
            .collect(),
    };
    let object = serde_json::to_string(&payload).unwrap_or_else(|_| "{}".to_owned());
    // `{"stageId":…}` → `"stageId":…}}`
    let mut rest = object.get(1..).unwrap_or("}").to_owned();
    rest.push('}');
    rest
}

/// Close codes of the events socket and the reason named in `aws:ivs:DISCONNECT`:
/// 4001 replaced by a newer socket, 4003 DisconnectParticipant (its reason as the
/// close reason), 4004 stage deleted, 4005 token revoked, 4008 idle, 1001 server
/// shutting down.
fn close_frame(why: &EventsClose) -> (CloseFrame, &'static str) {
    let (code, name, reason) = match why {
        EventsClose::Replaced => (
            4001,
            "REPLACED",
            "replaced by a newer connection".to_owned(),
        ),
        EventsClose::Disconnected(reason) => (
            4003,
            "PARTICIPANT_DISCONNECTED",
            reason.clone().unwrap_or_else(|| "disconnected".to_owned()),
        ),
        EventsClose::StageDeleted => (4004, "STAGE_DELETED", "the stage was deleted".to_owned()),
        EventsClose::TokenRevoked => (
            4005,
            "TOKEN_REVOKED",
            "the participant token was revoked".to_owned(),
        ),
        EventsClose::ServerShutdown => (
            1001,
            "SERVER_SHUTDOWN",
            "the server is shutting down".to_owned(),
        ),
    };
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    };
    (frame, name)
}

// ----- HTTP plumbing ----------------------------------------------------------

/// The answer refusing a WHIP POST ([`whip_request`]): `401` carries a
/// `WWW-Authenticate` challenge.
fn whip_refused((status, message): (StatusCode, String)) -> Response {
    if status == StatusCode::UNAUTHORIZED {
        unauthorized(&message)
    } else {
        plain(status, &message)
    }
}

/// The token and the offer of a WHIP POST, or the status and reason refusing it.
///
/// Everything the headers can decide is decided before the body is read: a missing
/// bearer token, one that is not a decodable ES384 JWT, a wrong content type or a
/// declared length over [`MAX_OFFER_BYTES`] are answered with the body unread, so an
/// unauthenticated client cannot make the server hold its offer (SECURITY.md). The
/// token's signature is checked by the live plane, as before.
async fn whip_request(
    request_headers: &HeaderMap,
    body: Body,
) -> Result<(String, String), (StatusCode, String)> {
    let token = bearer_token(request_headers).ok_or((
        StatusCode::UNAUTHORIZED,
        "a participant token is required: Authorization: Bearer <token>".to_owned(),
    ))?;
    if let Err(rejection) = token::inspect(&token) {
        return Err((StatusCode::UNAUTHORIZED, rejection.to_string()));
    }
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
            "Content-Type must be application/sdp".to_owned(),
        ));
    }
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the SDP offer is larger than {MAX_OFFER_BYTES} bytes"),
        )
    };
    let declared = request_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_OFFER_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_OFFER_BYTES)
        .await
        .map_err(|e| {
            let e: &(dyn std::error::Error + 'static) = &e;
            if crate::server::is_deadline_error(e) {
                (
                    StatusCode::REQUEST_TIMEOUT,
                    "the SDP offer did not arrive in time".to_owned(),
                )
            } else if is_length_limit(e) {
                too_large()
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "the SDP offer could not be read".to_owned(),
                )
            }
        })?;
    let offer = std::str::from_utf8(&bytes)
        .map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                "the SDP offer is not UTF-8 text".to_owned(),
            )
        })?
        .to_owned();
    if offer.trim().is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "the request has no SDP offer".to_owned(),
        ));
    }
    Ok((token, offer))
}

/// Whether a body error is the reader's length limit.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
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
