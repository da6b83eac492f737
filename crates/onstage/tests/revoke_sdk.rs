//! RevokeConnectionToken (BEHAVIOUR §5.7) through aws-sdk-ivsrealtime, against a real
//! `onstage serve`: the revoked token's events socket is told `aws:ivs:DISCONNECT`
//! and closed within a second, another participant's socket stays, and the token is
//! refused from then on — also after a restart.

#[allow(unused_macros)] // `expect_failure`, for other tests
mod common;

use std::time::{Duration, Instant};

use aws_sdk_ivsrealtime::types::ParticipantToken;
use common::{Server, arn_id};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the events socket the way IVS's client libraries do; the HTTP status when
/// the handshake is refused.
async fn open_events(server: &Server, stage_id: &str, token: &str) -> Result<Socket, u16> {
    let url = format!(
        "ws://127.0.0.1:{}/events?topic={stage_id}/publishers&traceid=t",
        server.port
    );
    let mut request = url.into_client_request().expect("a WebSocket request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        token.parse().expect("a token is a header value"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("the events socket failed: {e}"),
    }
}

/// The next JSON message, within `wait`; `None` when the socket ended.
async fn next_json(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .expect("a message in time")?;
        match message {
            Ok(Message::Text(text)) => {
                return Some(serde_json::from_str(&text).expect("JSON from the server"));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn token(client: &aws_sdk_ivsrealtime::Client, stage: &str, user: &str) -> ParticipantToken {
    client
        .create_participant_token()
        .stage_arn(stage)
        .user_id(user)
        .send()
        .await
        .expect("CreateParticipantToken")
        .participant_token
        .expect("a token")
}

#[tokio::test]
async fn revoking_a_token_closes_its_connections_and_refuses_it_after_a_restart() {
    let data = tempfile::tempdir().expect("a data directory");
    let server = Server::start_in(data.path(), &[]).await;
    let client = server.client();
    let stage = client
        .create_stage()
        .name("revoke")
        .send()
        .await
        .expect("CreateStage")
        .stage
        .expect("the stage");
    let stage_id = arn_id(stage.arn()).to_owned();
    let revoked = token(&client, stage.arn(), "revoked").await;
    let kept = token(&client, stage.arn(), "kept").await;
    let (revoked_id, revoked_token) = (
        revoked.participant_id().unwrap_or_default().to_owned(),
        revoked.token().unwrap_or_default().to_owned(),
    );
    let kept_token = kept.token().unwrap_or_default().to_owned();

    let mut kept_socket = open_events(&server, &stage_id, &kept_token)
        .await
        .expect("the kept token opens its socket");
    let mut socket = open_events(&server, &stage_id, &revoked_token)
        .await
        .expect("the token opens its socket before it is revoked");
    let first = next_json(&mut socket, Duration::from_secs(5))
        .await
        .expect("a first STAGE_STATE");
    assert_eq!(first["type"], "STAGE_STATE", "{first}");
    assert_eq!(first["payload"]["sequenceNumber"], 1, "{first}");

    let started = Instant::now();
    client
        .revoke_connection_token()
        .token_id(&revoked_id)
        .send()
        .await
        .expect("RevokeConnectionToken");
    let goodbye = next_json(&mut socket, Duration::from_secs(5))
        .await
        .expect("aws:ivs:DISCONNECT before the close");
    assert_eq!(goodbye["type"], "aws:ivs:DISCONNECT", "{goodbye}");
    assert_eq!(goodbye["reason"], "TOKEN_REVOKED", "{goodbye}");
    assert!(
        next_json(&mut socket, Duration::from_secs(5))
            .await
            .is_none(),
        "the socket closes after DISCONNECT"
    );
    // Closed by the revocation itself, not by any of the socket's timeouts (the
    // shortest, the keep-alive's, is 45 s); how fast is measured elsewhere.
    assert!(started.elapsed() < Duration::from_secs(20));

    // The other participant hears that the revoked one left, and stays.
    loop {
        let state = next_json(&mut kept_socket, Duration::from_secs(1))
            .await
            .expect("the kept socket stays open");
        let ids: Vec<&str> = state["payload"]["participants"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["id"].as_str()).collect())
            .unwrap_or_default();
        if state["type"] == "STAGE_STATE" && !ids.contains(&revoked_id.as_str()) {
            break;
        }
    }
    assert_eq!(
        open_events(&server, &stage_id, &revoked_token).await.err(),
        Some(403)
    );
    drop(kept_socket);

    server.stop();
    let server = Server::start_in(data.path(), &[]).await;
    assert_eq!(
        open_events(&server, &stage_id, &revoked_token).await.err(),
        Some(403),
        "still revoked after a restart"
    );
    assert!(
        open_events(&server, &stage_id, &kept_token).await.is_ok(),
        "other tokens are unaffected"
    );
    server.stop();
}
