//! The participant endpoints over HTTP and a real WebSocket, with the SQLite store
//! and the test kit's media plane, which answers every offer with a canned SDP.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use onstage_api::{ApiState, Credentials, participant_router};
use onstage_stage::live::LiveConfig;
use onstage_stage::media::MediaRefusal;
use onstage_stage::model::{ParticipantFilter, ParticipantState, Stage};
use onstage_stage::service::{Capability, NewStage, TokenRequest};
use onstage_stage::{ControlPlane, ControlPlaneConfig, LivePlane};
use onstage_store::SqliteStore;
use onstage_testkit::{FakeMedia, account, eventually};
use serde_json::Value;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

struct Server {
    app: Router,
    media: Arc<FakeMedia>,
    control: Arc<ControlPlane>,
    stage: Stage,
    addr: std::net::SocketAddr,
}

async fn server() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = SqliteStore::open_in_memory().await.unwrap();
    let config = ControlPlaneConfig {
        whip_url: format!("http://{addr}/whip"),
        events_url: format!("ws://{addr}/events"),
        rtmp_url: None,
        rtmps_url: None,
    };
    let control = Arc::new(ControlPlane::open(Arc::new(store), config).await.unwrap());
    let media = Arc::new(FakeMedia::default());
    let live = LivePlane::open(control.clone(), media.clone(), LiveConfig::default())
        .await
        .unwrap();
    let state = ApiState::new(
        control.clone(),
        Credentials::new(),
        "us-east-1".into(),
        None,
    )
    .await
    .unwrap();
    // Mounted exactly as the binary mounts it.
    let app = onstage_api::router(Arc::new(state)).merge(participant_router(live));
    let served = app.clone();
    tokio::spawn(async move { axum::serve(listener, served).await });
    let (stage, _) = control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap();
    Server {
        app,
        media,
        control,
        stage,
        addr,
    }
}

impl Server {
    async fn token(&self, capabilities: &[Capability]) -> (String, String) {
        let issued = self
            .control
            .create_participant_token(
                &account(),
                &self.stage.arn.to_string(),
                TokenRequest {
                    user_id: Some("viewer".into()),
                    capabilities: Some(capabilities.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        (issued.participant_id, issued.token)
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn whip(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        offer: &str,
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut request = Request::post(path)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::USER_AGENT, "Python/3.11 aiohttp/3.9.1");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.call(request.body(Body::from(offer.to_owned())).unwrap())
            .await
    }

    async fn session_id(&self) -> Option<String> {
        self.control
            .get_stage(&account(), &self.stage.arn.to_string())
            .await
            .unwrap()
            .active_session_id
    }

    async fn events_of(&self, session: &str, participant: &str) -> Vec<(String, Option<String>)> {
        let page = self
            .control
            .list_participant_events(
                &account(),
                &self.stage.arn.to_string(),
                session,
                participant,
                None,
                50,
            )
            .await
            .unwrap();
        page.items
            .into_iter()
            .map(|e| {
                (
                    e.name.as_str().to_owned(),
                    e.error_code.map(|c| c.as_str().to_owned()),
                )
            })
            .collect()
    }

    async fn connect_events(
        &self,
        token: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let mut request = format!("ws://{}/events/{}", self.addr, self.stage.arn.id)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, token.parse().unwrap());
        let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            token,
            "the token is echoed as the subprotocol"
        );
        socket
    }
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match message {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(text.as_str()).unwrap();
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn whip_publish_answers_201_and_delete_leaves() {
    let s = server().await;
    let (alice, token) = s.token(&[Capability::Publish, Capability::Subscribe]).await;
    let (status, headers, body) = s
        .whip("/whip", Some(&token), "application/sdp", OFFER)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/sdp");
    assert!(body.starts_with("v=0"));
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    // Absolute, under the stage's WHIP endpoint, for web apps on other origins.
    assert!(
        location.starts_with(&format!("http://{}/whip/resource/", s.addr)),
        "{location}"
    );
    // The seven IVS headers, as on every API response.
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(
        headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("Location")
    );

    let session = s.session_id().await.expect("the publish started a session");
    let participant = s
        .control
        .get_participant(&account(), &s.stage.arn.to_string(), &session, &alice)
        .await
        .unwrap();
    assert_eq!(participant.state, ParticipantState::Connected);
    assert!(participant.published);
    assert_eq!(participant.protocol.as_str(), "WHIP");
    assert_eq!(participant.user_id.as_deref(), Some("viewer"));
    assert_eq!(participant.client.browser_name.as_deref(), Some("Python"));

    // A subscriber, then everyone leaves with DELETE.
    let (bob, bob_token) = s.token(&[Capability::Subscribe]).await;
    let (status, headers, _) = s
        .whip(
            &format!("/whip/subscribe/{alice}"),
            Some(&bob_token),
            "application/sdp",
            OFFER,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let bob_location = headers[header::LOCATION].to_str().unwrap().to_owned();

    let (status, _, _) = s
        .call(Request::delete(&location).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = s
        .call(Request::delete(&location).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The publisher leaving ended bob's only connection: the session is over.
    let (status, _, _) = s
        .call(Request::delete(&bob_location).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(s.session_id().await, None);

    let names: Vec<String> = s
        .events_of(&session, &alice)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        ["LEFT", "PUBLISH_STOPPED", "PUBLISH_STARTED", "JOINED"],
        "newest first"
    );
    let names: Vec<String> = s
        .events_of(&session, &bob)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        ["LEFT", "SUBSCRIBE_STOPPED", "SUBSCRIBE_STARTED", "JOINED"]
    );
    let disconnected = s
        .control
        .list_participants(
            &account(),
            &s.stage.arn.to_string(),
            &session,
            &ParticipantFilter::State(ParticipantState::Disconnected),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(disconnected.items.len(), 2);
}

#[tokio::test]
async fn refusals_are_plain_text_with_spec_statuses() {
    let s = server().await;
    let (host, host_token) = s.token(&[Capability::Publish]).await;
    let (viewer, viewer_token) = s.token(&[Capability::Subscribe]).await;

    let (status, headers, body) = s.whip("/whip", None, "application/sdp", OFFER).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(body.contains("Bearer"));
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");

    let (status, _, _) = s
        .whip("/whip", Some(&host_token), "application/json", OFFER)
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, _, body) = s
        .whip("/whip", Some("not.a.token"), "application/sdp", OFFER)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    assert_eq!(
        s.whip("/whip", Some(&host_token), "application/sdp", OFFER)
            .await
            .0,
        StatusCode::CREATED
    );
    let session = s.session_id().await.unwrap();

    let (status, _, body) = s
        .whip("/whip", Some(&viewer_token), "application/sdp", OFFER)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("does not allow publishing"), "{body}");

    let (status, _, _) = s
        .whip(
            "/whip/subscribe/nobody",
            Some(&viewer_token),
            "application/sdp",
            OFFER,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, _) = s
        .whip(
            &format!("/whip/subscribe/{viewer}"),
            Some(&host_token),
            "application/sdp",
            OFFER,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the host's token does not allow subscribing"
    );

    let av1 = format!("{OFFER}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 AV1/90000\r\n");
    let (other, other_token) = s.token(&[Capability::Publish]).await;
    s.media.refuse_next(MediaRefusal::InvalidVideoCodec);
    let (status, _, body) = s
        .whip("/whip", Some(&other_token), "application/sdp", &av1)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    assert_eq!(
        s.events_of(&session, &viewer).await,
        [
            (
                "SUBSCRIBE_ERROR".to_owned(),
                Some("PUBLISHER_NOT_FOUND".to_owned())
            ),
            (
                "PUBLISH_ERROR".to_owned(),
                Some("INSUFFICIENT_CAPABILITIES".to_owned())
            ),
        ]
    );
    assert_eq!(
        s.events_of(&session, &host).await[0],
        (
            "SUBSCRIBE_ERROR".to_owned(),
            Some("INSUFFICIENT_CAPABILITIES".to_owned())
        )
    );
    assert_eq!(
        s.events_of(&session, &other).await,
        [(
            "PUBLISH_ERROR".to_owned(),
            Some("INVALID_VIDEO_CODEC".to_owned())
        )]
    );

    // The WHIP endpoints answer CORS preflights without a token.
    let (status, headers, _) = s
        .call(
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/whip")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(status.is_success());
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("DELETE")
    );
}

#[tokio::test]
async fn the_events_socket_tells_who_is_on_stage() {
    let s = server().await;
    let (bob, bob_token) = s.token(&[]).await;
    let mut socket = s.connect_events(&bob_token).await;
    let state = next_json(&mut socket).await;
    assert_eq!(state["type"], "STAGE_STATE");
    assert_eq!(state["payload"]["stageId"], s.stage.arn.id.as_str());
    assert_eq!(state["payload"]["participants"][0]["id"], bob.as_str());
    assert_eq!(state["payload"]["participants"][0]["userId"], "viewer");
    assert_eq!(state["payload"]["participants"][0]["isPublishing"], false);
    assert_eq!(
        state["payload"]["participants"][0]["attributes"],
        serde_json::json!({})
    );

    socket
        .send(tungstenite::Message::Text(r#"{"type":"PING"}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        serde_json::json!({"type": "PONG"})
    );

    let (alice, alice_token) = s.token(&[Capability::Publish]).await;
    assert_eq!(
        s.whip("/whip", Some(&alice_token), "application/sdp", OFFER)
            .await
            .0,
        StatusCode::CREATED
    );
    let state = next_json(&mut socket).await;
    let listed = state["payload"]["participants"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1]["id"], alice.as_str());
    assert_eq!(listed[1]["isPublishing"], true);

    // DisconnectParticipant closes the socket with its reason.
    s.control
        .disconnect_participant(
            &account(),
            &s.stage.arn.to_string(),
            &bob,
            Some("bye now".into()),
        )
        .await
        .unwrap();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
        {
            Some(Ok(tungstenite::Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(u16::from(closed.code), 4003);
    assert_eq!(closed.reason.as_str(), "bye now");

    // And bob cannot come back.
    let mut request = format!("ws://{}/events/{}", s.addr, s.stage.arn.id)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_PROTOCOL, bob_token.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("{:?}", other.map(|(_, r)| r)),
    }
}

#[tokio::test]
async fn an_events_socket_closing_leaves_the_stage() {
    let s = server().await;
    let (bob, bob_token) = s.token(&[]).await;
    let mut socket = s.connect_events(&bob_token).await;
    next_json(&mut socket).await;
    let session = s.session_id().await.unwrap();
    socket.close(None).await.unwrap();
    eventually("the session ended", async || s.session_id().await.is_none()).await;
    let names: Vec<String> = s
        .events_of(&session, &bob)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["LEFT", "JOINED"]);

    // A token for another stage is refused at this one.
    let (other, _) = s
        .control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap();
    let foreign = s
        .control
        .create_participant_token(&account(), &other.arn.to_string(), TokenRequest::default())
        .await
        .unwrap();
    let mut request = format!("ws://{}/events/{}", s.addr, s.stage.arn.id)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        foreign.token.parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("{:?}", other.map(|(_, r)| r)),
    }
}
