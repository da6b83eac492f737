//! Participant replication (BEHAVIOUR §6) through aws-sdk-ivsrealtime: the start / list /
//! stop path and its errors, against a real `onstage serve`.
//!
//! A publisher here is signalling only: a WHIP POST of an audio-only SDP offer whose
//! ICE candidate is a UDP socket this test holds and never answers from. The server
//! answers 201 and the participant is CONNECTED and publishing from then on (until
//! the media plane's connect timeout, far longer than this test); no media flows.
//! That is all the control plane needs to accept a replication. What a replica
//! carries is tested with real peers in tests/python/replication.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::net::UdpSocket;

use aws_sdk_ivsrealtime::Client;
use aws_sdk_ivsrealtime::types::{
    ParticipantState, ParticipantTokenCapability, ReplicationState, ReplicationType, Stage,
};
use bytes::Bytes;
use common::{Server, arn_id};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const HEADERS: [(&str, &str); 6] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Cache-Control", "no-store, no-cache"),
    (
        "Content-Security-Policy",
        "default-src 'self'; upgrade-insecure-requests;",
    ),
    (
        "Strict-Transport-Security",
        "max-age:47304000; includeSubDomains",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
];

async fn create_stage(client: &Client, name: &str) -> Stage {
    client
        .create_stage()
        .name(name)
        .send()
        .await
        .expect("CreateStage")
        .stage
        .expect("CreateStage returns the stage")
}

/// An audio-only (Opus) sendonly offer, bundle and rtcp-mux, whose one ICE candidate
/// is `port` on loopback.
fn offer(port: u16) -> String {
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", (i * 7 + 3) % 256))
        .collect::<Vec<_>>()
        .join(":");
    [
        "v=0",
        "o=- 4004794979 4004794979 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic:WMS *",
        &format!("m=audio {port} UDP/TLS/RTP/SAVPF 96"),
        "c=IN IP4 127.0.0.1",
        "a=sendonly",
        "a=mid:0",
        "a=msid:sdk-stream sdk-audio",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc:2073180468 cname:replication-sdk-test",
        "a=rtpmap:96 opus/48000/2",
        &format!("a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"),
        "a=end-of-candidates",
        "a=ice-ufrag:RsdK",
        "a=ice-pwd:replicationsdktestpassword",
        &format!("a=fingerprint:sha-256 {fingerprint}"),
        "a=setup:actpass",
        "",
    ]
    .join("\r\n")
}

/// POSTs an SDP offer to `url` (http://127.0.0.1:port/path) with a Bearer token.
async fn post_offer(url: &str, token: &str, sdp: String) -> (u16, http::HeaderMap, String) {
    let rest = url.strip_prefix("http://").expect("an http:// WHIP URL");
    let (authority, path) = rest.split_once('/').expect("a WHIP URL with a path");
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect to the WHIP endpoint");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = http::Request::post(format!("/{path}"))
        .header(http::header::HOST, authority)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/sdp")
        .body(Full::new(Bytes::from(sdp)))
        .expect("request");
    let response = sender.send_request(request).await.expect("POST the offer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn active_session(client: &Client, arn: &str) -> Option<String> {
    let out = client.get_stage().arn(arn).send().await.expect("GetStage");
    out.stage
        .and_then(|s| s.active_session_id().map(str::to_owned))
}

async fn replicas(
    client: &Client,
    source: &str,
    pid: &str,
) -> Vec<(String, ReplicationState, String, String)> {
    let out = client
        .list_participant_replicas()
        .source_stage_arn(source)
        .participant_id(pid)
        .send()
        .await
        .expect("ListParticipantReplicas");
    out.replicas()
        .iter()
        .map(|r| {
            assert_eq!(r.source_stage_arn(), source);
            assert_eq!(r.participant_id(), pid);
            (
                r.destination_stage_arn().to_owned(),
                r.replication_state().clone(),
                r.source_session_id().to_owned(),
                r.destination_session_id().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn start_list_stop_through_the_sdk() {
    let server = Server::start().await;
    let client = server.client();
    let a = create_stage(&client, "sdk-source").await;
    let b = create_stage(&client, "sdk-destination").await;
    let c = create_stage(&client, "sdk-onward").await;
    let token = client
        .create_participant_token()
        .stage_arn(a.arn())
        .user_id("sdk-host")
        .capabilities(ParticipantTokenCapability::Publish)
        .attributes("role", "host")
        .attributes("lang", "en")
        .send()
        .await
        .expect("CreateParticipantToken")
        .participant_token
        .expect("token");
    let pid = token.participant_id().expect("participantId").to_owned();

    // The publisher: signalling only (see the module comment).
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    let port = silent.local_addr().expect("local address").port();
    let whip = a
        .endpoints()
        .and_then(|e| e.whip())
        .expect("the stage's WHIP endpoint")
        .to_owned();
    let (status, headers, body) =
        post_offer(&whip, token.token().expect("token"), offer(port)).await;
    assert_eq!(
        status,
        201,
        "WHIP publish: {status} {body}\n{}",
        server.log()
    );
    assert!(
        headers.get(http::header::LOCATION).is_some(),
        "201 without Location"
    );
    let src_session = active_session(&client, a.arn())
        .await
        .expect("A has a session once its publisher joined");
    assert!(
        active_session(&client, b.arn()).await.is_none(),
        "B is idle before the replication"
    );

    // Start: 200, the seven headers as the output's members.
    let out = client
        .start_participant_replication()
        .source_stage_arn(a.arn())
        .destination_stage_arn(b.arn())
        .participant_id(&pid)
        .reconnect_window_seconds(0)
        .attributes("lang", "fr")
        .attributes("origin", "sdk")
        .send()
        .await
        .unwrap_or_else(|e| panic!("StartParticipantReplication: {e:?}\n{}", server.log()));
    let got = [
        out.access_control_allow_origin(),
        out.cache_control(),
        out.content_security_policy(),
        out.strict_transport_security(),
        out.x_content_type_options(),
        out.x_frame_options(),
    ];
    for ((name, want), got) in HEADERS.iter().zip(got) {
        assert_eq!(
            got,
            Some(*want),
            "StartParticipantReplication output header {name}"
        );
    }
    assert!(
        out.access_control_expose_headers()
            .is_some_and(|v| !v.is_empty()),
        "Access-Control-Expose-Headers"
    );

    // In place when the call returns: B's session and the replica's record.
    let dst_session = active_session(&client, b.arn())
        .await
        .expect("the replication started B's session");
    assert_eq!(
        replicas(&client, a.arn(), &pid).await,
        vec![(
            b.arn().to_owned(),
            ReplicationState::Active,
            src_session.clone(),
            dst_session.clone()
        )]
    );
    let replica = client
        .get_participant()
        .stage_arn(b.arn())
        .session_id(&dst_session)
        .participant_id(&pid)
        .send()
        .await
        .expect("GetParticipant of the replica")
        .participant
        .expect("participant");
    assert_eq!(
        replica.replication_type(),
        Some(&ReplicationType::Replica),
        "{replica:?}"
    );
    assert_eq!(
        replica.replication_state(),
        Some(&ReplicationState::Active),
        "{replica:?}"
    );
    assert_eq!(replica.source_stage_arn(), Some(a.arn()), "{replica:?}");
    assert_eq!(
        replica.source_session_id(),
        Some(src_session.as_str()),
        "{replica:?}"
    );
    assert_eq!(
        replica.state(),
        Some(&ParticipantState::Connected),
        "{replica:?}"
    );
    assert!(replica.published(), "{replica:?}");
    assert_eq!(replica.user_id(), Some("sdk-host"), "{replica:?}");
    let merged: HashMap<String, String> = [("role", "host"), ("lang", "fr"), ("origin", "sdk")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        replica.attributes(),
        Some(&merged),
        "token attributes overlaid with the request's"
    );
    let source = client
        .get_participant()
        .stage_arn(a.arn())
        .session_id(&src_session)
        .participant_id(&pid)
        .send()
        .await
        .expect("GetParticipant of the source")
        .participant
        .expect("participant");
    assert_eq!(
        source.replication_type(),
        Some(&ReplicationType::Source),
        "{source:?}"
    );
    assert_eq!(
        source.replication_state(),
        Some(&ReplicationState::Active),
        "{source:?}"
    );

    // Already replicated there; a replica replicated onward.
    expect_failure!(
        client
            .start_participant_replication()
            .source_stage_arn(a.arn())
            .destination_stage_arn(b.arn())
            .participant_id(&pid)
            .send()
            .await
    )
    .is(409, "ConflictException")
    .names(&[&pid]);
    expect_failure!(
        client
            .start_participant_replication()
            .source_stage_arn(b.arn())
            .destination_stage_arn(c.arn())
            .participant_id(&pid)
            .send()
            .await
    )
    .is(400, "ValidationException");

    // Stop: 200 with the headers; STOPPED; a second stop finds nothing ACTIVE.
    let out = client
        .stop_participant_replication()
        .source_stage_arn(a.arn())
        .destination_stage_arn(b.arn())
        .participant_id(&pid)
        .send()
        .await
        .unwrap_or_else(|e| panic!("StopParticipantReplication: {e:?}\n{}", server.log()));
    assert_eq!(out.access_control_allow_origin(), Some("*"));
    assert_eq!(out.x_frame_options(), Some("DENY"));
    assert_eq!(
        replicas(&client, a.arn(), &pid).await,
        vec![(
            b.arn().to_owned(),
            ReplicationState::Stopped,
            src_session.clone(),
            dst_session.clone()
        )]
    );
    let source = client
        .get_participant()
        .stage_arn(a.arn())
        .session_id(&src_session)
        .participant_id(&pid)
        .send()
        .await
        .expect("GetParticipant of the source")
        .participant
        .expect("participant");
    assert_eq!(
        source.replication_type(),
        Some(&ReplicationType::Source),
        "{source:?}"
    );
    assert_eq!(
        source.replication_state(),
        Some(&ReplicationState::Stopped),
        "{source:?}"
    );
    expect_failure!(
        client
            .stop_participant_replication()
            .source_stage_arn(a.arn())
            .destination_stage_arn(b.arn())
            .participant_id(&pid)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&[&pid]);

    // A new Start after the stop works, into another destination too.
    for dest in [&b, &c] {
        client
            .start_participant_replication()
            .source_stage_arn(a.arn())
            .destination_stage_arn(dest.arn())
            .participant_id(&pid)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "StartParticipantReplication to {}: {e:?}",
                    arn_id(dest.arn())
                )
            });
    }
    let mut states: Vec<(String, ReplicationState)> = replicas(&client, a.arn(), &pid)
        .await
        .into_iter()
        .map(|(d, s, _, _)| (d, s))
        .collect();
    states.sort_by(|x, y| (x.0.as_str(), x.1.as_str()).cmp(&(y.0.as_str(), y.1.as_str())));
    let mut want = vec![
        (b.arn().to_owned(), ReplicationState::Active),
        (b.arn().to_owned(), ReplicationState::Stopped),
        (c.arn().to_owned(), ReplicationState::Active),
    ];
    want.sort_by(|x, y| (x.0.as_str(), x.1.as_str()).cmp(&(y.0.as_str(), y.1.as_str())));
    assert_eq!(states, want);

    // Pagination through the SDK's paginator, one record a page.
    let pages = client
        .list_participant_replicas()
        .source_stage_arn(a.arn())
        .participant_id(&pid)
        .max_results(1)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .expect("ListParticipantReplicas pages");
    let per_page: Vec<usize> = pages.iter().map(|p| p.replicas().len()).collect();
    assert_eq!(per_page.iter().sum::<usize>(), 3, "pages {per_page:?}");
    assert!(per_page.iter().all(|n| *n <= 1), "pages {per_page:?}");
    drop(silent);
}
