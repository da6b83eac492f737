//! The live plane driven end to end without sockets: real tokens from the control
//! plane, the SQLite store in memory, a fake media plane that answers every offer,
//! and virtual time.

use std::sync::Arc;
use std::time::Duration;

use onstage_stage::live::refusals::MAX_RECORDED_REFUSALS;
use onstage_stage::live::{EventsClose, LiveConfig, LivePlane, RefusalKind};
use onstage_stage::media::{CloseCause, MediaRefusal, MediaSignal, PeerId, SourceId};
use onstage_stage::model::{EventErrorCode, EventName, ParticipantState, Stage};
use onstage_stage::service::{Capability, NewStage, TokenRequest};
use onstage_stage::{ControlPlane, DomainError};
use onstage_testkit::{
    EPOCH, FakeMedia, ManualClock, MediaCall, TestStore, account, control_plane, eventually,
};

struct World {
    store: Arc<TestStore>,
    media: Arc<FakeMedia>,
    clock: Arc<ManualClock>,
    control: Arc<ControlPlane>,
    live: Arc<LivePlane>,
    stage: Stage,
}

async fn world() -> World {
    world_with(LiveConfig::default()).await
}

async fn world_with(config: LiveConfig) -> World {
    let store = Arc::new(TestStore::new().await);
    let media = Arc::new(FakeMedia::default());
    let clock = ManualClock::new();
    let control = control_plane(store.clone(), clock.clone()).await;
    let live = LivePlane::open(control.clone(), media.clone(), config)
        .await
        .unwrap();
    let (stage, _) = control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap();
    World {
        store,
        media,
        clock,
        control,
        live,
        stage,
    }
}

impl World {
    /// A token for the stage: (participant id, token).
    async fn token(&self, capabilities: &[Capability]) -> (String, String) {
        let issued = self
            .control
            .create_participant_token(
                &account(),
                &self.stage.arn.to_string(),
                TokenRequest {
                    user_id: Some("someone".into()),
                    capabilities: Some(capabilities.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        (issued.participant_id, issued.token)
    }

    async fn both(&self) -> (String, String) {
        self.token(&[Capability::Publish, Capability::Subscribe])
            .await
    }
}

#[tokio::test]
async fn publish_subscribe_and_leave() {
    let w = world().await;
    let (alice, alice_token) = w.both().await;
    let (bob, bob_token) = w.both().await;

    let published = w
        .live
        .publish(
            alice_token.clone(),
            "offer".into(),
            Some("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36".into()),
        )
        .await
        .unwrap();
    assert_eq!(published.participant_id, alice);
    assert!(published.answer_sdp.contains("s=answer-"));
    assert_eq!(published.resource_id.len(), 24);
    let session = w
        .store
        .running_session(&w.stage.arn)
        .await
        .expect("a session started");
    // Ids come from the test kit's sequence, in the order they were asked for.
    assert_eq!(
        (
            w.stage.arn.id.as_str(),
            alice.as_str(),
            bob.as_str(),
            session.as_str()
        ),
        (
            "res000000001",
            "par000000002",
            "par000000003",
            "st-ses0000000004"
        )
    );
    // The control plane sees it as the stage's active session.
    let stage = w
        .control
        .get_stage(&account(), &w.stage.arn.to_string())
        .await
        .unwrap();
    assert_eq!(stage.active_session_id.as_deref(), Some(session.as_str()));
    let record = w.store.participant_in(&w.stage.arn, &alice).await.unwrap();
    assert_eq!(record.client.browser_name.as_deref(), Some("Chrome"));
    assert!(record.published);

    let subscribed = w
        .live
        .subscribe(bob_token, alice.clone(), "recvonly offer".into(), None)
        .await
        .unwrap();
    assert_eq!(
        w.media.calls()[1],
        MediaCall::Subscribe(SourceId(1), w.media.peer(1))
    );
    let sub_event = w
        .store
        .events()
        .into_iter()
        .find(|e| e.name == EventName::SubscribeStarted)
        .unwrap();
    assert_eq!(
        (
            sub_event.participant_id.as_str(),
            sub_event.remote_participant_id.as_deref()
        ),
        (bob.as_str(), Some(alice.as_str()))
    );

    // DELETE of the subscribe: bob leaves, alice stays.
    assert!(w.live.end_connection(&subscribed.resource_id).await);
    assert!(
        !w.live.end_connection(&subscribed.resource_id).await,
        "a resource is deleted once"
    );
    assert_eq!(
        w.store.events_of(&bob),
        ["JOINED", "SUBSCRIBE_STARTED", "SUBSCRIBE_STOPPED", "LEFT"]
    );
    assert!(w.media.closed_peers().contains(&w.media.peer(1)));

    // DELETE of the publish: alice leaves and the session ends.
    assert!(w.live.end_connection(&published.resource_id).await);
    assert_eq!(
        w.store.events_of(&alice),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    assert_eq!(w.media.closed_sources(), [SourceId(1)]);
    assert_eq!(
        w.store
            .participant_in(&w.stage.arn, &alice)
            .await
            .unwrap()
            .state,
        ParticipantState::Disconnected
    );
    assert_eq!(w.store.running_session(&w.stage.arn).await, None);
    assert_eq!(w.live.live_stage_count(), 0, "an idle stage holds nothing");
}

#[tokio::test]
async fn a_second_publish_with_the_same_token_replaces_the_first() {
    let w = world().await;
    let (alice, token) = w.both().await;
    let first = w
        .live
        .publish(token.clone(), "offer".into(), None)
        .await
        .unwrap();
    let second = w.live.publish(token, "offer".into(), None).await.unwrap();
    assert_ne!(first.resource_id, second.resource_id);
    // Same source: subscribers keep going.
    assert_eq!(
        w.media.calls()[..2],
        [
            MediaCall::Publish(SourceId(1), w.media.peer(0)),
            MediaCall::Publish(SourceId(1), w.media.peer(1))
        ]
    );
    assert!(
        !w.live.end_connection(&first.resource_id).await,
        "the replaced resource is gone"
    );
    assert_eq!(
        w.store.events_of(&alice),
        [
            "JOINED",
            "PUBLISH_STARTED",
            "PUBLISH_STOPPED",
            "PUBLISH_STARTED"
        ]
    );
    // The replaced peer's close from the media plane changes nothing.
    w.live
        .on_media_signal(MediaSignal::Closed(w.media.peer(0), CloseCause::Requested))
        .await;
    assert_eq!(w.store.events_of(&alice).len(), 4);
    assert!(w.live.stage_state(&w.stage.arn).unwrap().participants[0].is_publishing);
}

#[tokio::test]
async fn a_participant_s_recorded_refusals_are_bounded() {
    let w = world().await;
    let (_host, host_token) = w.both().await;
    let (viewer, viewer_token) = w.token(&[Capability::Subscribe]).await;
    w.live
        .publish(host_token, "offer".into(), None)
        .await
        .unwrap();
    let attempts = MAX_RECORDED_REFUSALS + 15;
    for _ in 0..attempts {
        let refusal = w
            .live
            .publish(viewer_token.clone(), "offer".into(), None)
            .await
            .unwrap_err();
        // Every attempt is answered as before ...
        assert_eq!(refusal.kind, RefusalKind::MissingCapability);
    }
    // ... but only the participant's budget is written.
    assert_eq!(
        w.store.events_with_codes(&viewer).len(),
        MAX_RECORDED_REFUSALS as usize
    );
}

#[tokio::test]
async fn refusals_are_typed_and_recorded() {
    let w = world().await;
    let (host, host_token) = w.both().await;
    let (viewer, viewer_token) = w.token(&[Capability::Subscribe]).await;

    // On an idle stage a refusal is only logged: no session starts.
    let refusal = w
        .live
        .publish(viewer_token.clone(), "offer".into(), None)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::MissingCapability);
    assert_eq!(w.store.sessions_started(), 0);

    w.live
        .publish(host_token.clone(), "offer".into(), None)
        .await
        .unwrap();
    let refusal = w
        .live
        .publish(viewer_token.clone(), "offer".into(), None)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::MissingCapability);
    assert_eq!(
        w.store.events_with_codes(&viewer),
        [(
            "PUBLISH_ERROR".into(),
            Some("INSUFFICIENT_CAPABILITIES".into())
        )]
    );

    let refusal = w
        .live
        .subscribe(viewer_token.clone(), "nobody".into(), "offer".into(), None)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::PublisherNotFound);
    assert_eq!(
        w.store.events_with_codes(&viewer)[1],
        ("SUBSCRIBE_ERROR".into(), Some("PUBLISHER_NOT_FOUND".into()))
    );

    // A forged token: 401, and nothing recorded under the participant id it claims.
    let before = w.store.events_with_codes(&host);
    let forged = format!("{}x", &host_token[..host_token.len() - 1]);
    let forged = if forged == host_token {
        format!("{}y", &host_token[..host_token.len() - 1])
    } else {
        forged
    };
    let refusal = w
        .live
        .publish(forged, "offer".into(), None)
        .await
        .unwrap_err();
    assert!(matches!(refusal.kind, RefusalKind::Token(_)), "{refusal:?}");
    assert_eq!(w.store.events_with_codes(&host), before);

    // The media plane refusing the offer's codecs.
    let (other, other_token) = w.both().await;
    w.media.refuse_next(MediaRefusal::InvalidVideoCodec);
    let refusal = w
        .live
        .publish(other_token, "offer".into(), None)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::InvalidVideoCodec);
    assert_eq!(
        w.store.events_with_codes(&other),
        [("PUBLISH_ERROR".into(), Some("INVALID_VIDEO_CODEC".into()))]
    );
    assert_eq!(
        w.media.closed_sources().len(),
        1,
        "the unused source is released"
    );
    assert_eq!(
        w.live.stage_state(&w.stage.arn).unwrap().participants.len(),
        1
    );
}

#[tokio::test]
async fn a_wrong_stage_token_on_the_events_socket_is_recorded_at_that_stage() {
    let w = world().await;
    let (_, host_token) = w.both().await;
    w.live
        .publish(host_token, "offer".into(), None)
        .await
        .unwrap();
    let (other_stage, _) = w
        .control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap();
    let foreign = w
        .control
        .create_participant_token(
            &account(),
            &other_stage.arn.to_string(),
            TokenRequest::default(),
        )
        .await
        .unwrap();
    let refusal = w
        .live
        .open_events(foreign.token, w.stage.arn.id.clone(), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(refusal.kind, RefusalKind::Token(_)), "{refusal:?}");
    assert_eq!(
        w.store.events_with_codes(&foreign.participant_id),
        [("JOIN_ERROR".into(), Some("INVALID_INPUT".into()))]
    );
}

#[tokio::test]
async fn only_twelve_publishers_even_when_they_race() {
    let w = world().await;
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(w.both().await.1);
    }
    let attempts = tokens.into_iter().map(|t| {
        let live = w.live.clone();
        tokio::spawn(async move { live.publish(t, "offer".into(), None).await })
    });
    let mut accepted = 0;
    let mut quota = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(r) if r.kind == RefusalKind::QuotaExceeded => quota += 1,
            Err(r) => panic!("{r:?}"),
        }
    }
    assert_eq!((accepted, quota), (12, 8));
    let errors = w
        .store
        .events()
        .into_iter()
        .filter(|e| e.error_code == Some(EventErrorCode::QuotaExceeded))
        .count();
    assert_eq!(errors, 8);
}

#[tokio::test]
async fn the_events_socket_follows_the_stage() {
    let w = world().await;
    let (alice, alice_token) = w.both().await;
    let (bob, bob_token) = w.token(&[]).await;

    let mut bob_events = w
        .live
        .open_events(bob_token.clone(), w.stage.arn.id.clone(), None)
        .await
        .unwrap();
    assert_eq!(bob_events.participant_id(), bob);
    let state = bob_events.states().borrow_and_update().clone();
    assert_eq!(state.stage_id, w.stage.arn.id);
    assert_eq!(state.participants.len(), 1);

    let published = w
        .live
        .publish(alice_token, "offer".into(), None)
        .await
        .unwrap();
    bob_events.states().changed().await.unwrap();
    let state = bob_events.states().borrow_and_update().clone();
    let listed: Vec<(&str, bool)> = state
        .participants
        .iter()
        .map(|p| (p.id.as_str(), p.is_publishing))
        .collect();
    assert_eq!(listed, [(bob.as_str(), false), (alice.as_str(), true)]);

    w.live.end_connection(&published.resource_id).await;
    bob_events.states().changed().await.unwrap();
    assert_eq!(
        bob_events.states().borrow_and_update().participants.len(),
        1
    );

    // A second socket replaces the first.
    let mut second = w
        .live
        .open_events(bob_token, w.stage.arn.id.clone(), None)
        .await
        .unwrap();
    assert_eq!(bob_events.closed().await, EventsClose::Replaced);
    drop(bob_events);
    assert_eq!(second.states().borrow_and_update().participants.len(), 1);
    assert_eq!(w.store.events_of(&bob), ["JOINED"]);

    // Dropping the subscription is the socket closing: bob leaves, the session ends.
    drop(second);
    eventually("bob left", async || {
        w.store.events_of(&bob) == ["JOINED", "LEFT"]
    })
    .await;
    eventually("the session ended", async || {
        w.store.running_session(&w.stage.arn).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn peers_that_vanish_are_recorded_as_left() {
    let w = world().await;
    let (alice, alice_token) = w.both().await;
    let (bob, bob_token) = w.both().await;
    w.live
        .publish(alice_token, "offer".into(), None)
        .await
        .unwrap();
    w.live
        .subscribe(bob_token, alice.clone(), "offer".into(), None)
        .await
        .unwrap();

    let (signals, receiver) = tokio::sync::mpsc::unbounded_channel();
    w.live.spawn_media_signals(receiver);
    signals
        .send(MediaSignal::Connected(w.media.peer(0)))
        .unwrap();
    signals
        .send(MediaSignal::Closed(w.media.peer(0), CloseCause::Timeout))
        .unwrap();
    eventually("the session ended", async || {
        w.store.running_session(&w.stage.arn).await.is_none()
    })
    .await;
    assert_eq!(
        w.store.events_of(&alice),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    assert_eq!(
        w.store.events_of(&bob),
        ["JOINED", "SUBSCRIBE_STARTED", "SUBSCRIBE_STOPPED", "LEFT"]
    );
    assert_eq!(w.media.closed_sources(), [SourceId(1)]);
}

#[tokio::test]
async fn a_close_reported_before_the_answer_returns_is_not_lost() {
    let w = world().await;
    let (alice, alice_token) = w.both().await;
    // The fake media plane's first publish gets source 1 and peer 101.
    w.live
        .on_media_signal(MediaSignal::Closed(PeerId(101), CloseCause::RemoteClosed))
        .await;
    w.live
        .publish(alice_token, "offer".into(), None)
        .await
        .unwrap();
    assert_eq!(w.media.peer(0), PeerId(101));
    assert_eq!(
        w.store.events_of(&alice),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    assert_eq!(w.live.live_stage_count(), 0);
}

#[tokio::test]
async fn the_echo_of_a_requested_close_is_not_kept() {
    let w = world().await;
    for round in 0..20 {
        let (_, token) = w.both().await;
        let published = w.live.publish(token, "offer".into(), None).await.unwrap();
        assert!(w.live.end_connection(&published.resource_id).await);
        // The media plane confirms the close it was asked for, after the
        // connection has already ended.
        w.live
            .on_media_signal(MediaSignal::Closed(
                w.media.peer(round),
                CloseCause::Requested,
            ))
            .await;
    }
    assert_eq!(w.live.remembered_early_closes(), 0);
    assert_eq!(w.live.live_stage_count(), 0);
}

#[tokio::test]
async fn disconnect_participant_cuts_and_revokes() {
    let w = world().await;
    let (alice, alice_token) = w.both().await;
    let (bob, bob_token) = w.both().await;
    let arn = w.stage.arn.to_string();

    let err = w
        .control
        .disconnect_participant(&account(), &arn, &alice, None)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound(_)));

    w.live
        .publish(alice_token.clone(), "offer".into(), None)
        .await
        .unwrap();
    let mut alice_events = w
        .live
        .open_events(alice_token.clone(), w.stage.arn.id.clone(), None)
        .await
        .unwrap();
    w.live
        .subscribe(bob_token, alice.clone(), "offer".into(), None)
        .await
        .unwrap();

    w.control
        .disconnect_participant(&account(), &arn, &alice, Some("misbehaving".into()))
        .await
        .unwrap();
    assert_eq!(
        alice_events.closed().await,
        EventsClose::Disconnected(Some("misbehaving".into()))
    );
    assert_eq!(w.media.closed_sources(), [SourceId(1)]);
    assert_eq!(
        w.store.events_of(&alice),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    assert_eq!(
        w.store.events_of(&bob),
        ["JOINED", "SUBSCRIBE_STARTED", "SUBSCRIBE_STOPPED", "LEFT"]
    );
    drop(alice_events);

    // The id is refused from now on, with any kind of connection.
    let refusal = w
        .live
        .publish(alice_token.clone(), "offer".into(), None)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Revoked);
    let refusal = w
        .live
        .open_events(alice_token, w.stage.arn.id.clone(), None)
        .await
        .err()
        .unwrap();
    assert_eq!(refusal.kind, RefusalKind::Revoked);
    // And disconnecting again: it is not connected.
    let err = w
        .control
        .disconnect_participant(&account(), &arn, &alice, None)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound(_)));
}

#[tokio::test]
async fn delete_stage_disconnects_everyone_first() {
    let w = world().await;
    let (alice, alice_token) = w.both().await;
    w.live
        .publish(alice_token.clone(), "offer".into(), None)
        .await
        .unwrap();
    let mut events = w
        .live
        .open_events(alice_token.clone(), w.stage.arn.id.clone(), None)
        .await
        .unwrap();

    w.control
        .delete_stage(&account(), &w.stage.arn.to_string())
        .await
        .unwrap();
    assert_eq!(events.closed().await, EventsClose::StageDeleted);
    assert_eq!(w.media.closed_sources(), [SourceId(1)]);
    assert_eq!(
        w.store.events_of(&alice),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    drop(events);
    assert_eq!(w.live.live_stage_count(), 0);

    let refusal = w
        .live
        .publish(alice_token, "offer".into(), None)
        .await
        .unwrap_err();
    assert!(matches!(refusal.kind, RefusalKind::Token(_)), "{refusal:?}");
}

#[tokio::test]
async fn shutdown_ends_every_session() {
    let w = world().await;
    let (alice, alice_token) = w.both().await;
    w.live
        .publish(alice_token, "offer".into(), None)
        .await
        .unwrap();
    w.live.shutdown().await;
    assert_eq!(
        w.store.events_of(&alice),
        ["JOINED", "PUBLISH_STARTED", "PUBLISH_STOPPED", "LEFT"]
    );
    assert_eq!(w.store.running_session(&w.stage.arn).await, None);
}

#[tokio::test]
async fn every_time_recorded_is_the_clocks() {
    let w = world().await;
    assert_eq!(w.stage.created_at, EPOCH);
    let (alice, token) = w.both().await;
    let published = w.live.publish(token, "offer".into(), None).await.unwrap();
    w.clock.advance(Duration::from_secs(90));
    assert!(w.live.end_connection(&published.resource_id).await);

    let times: Vec<(EventName, i64)> = w
        .store
        .events()
        .into_iter()
        .filter(|e| e.participant_id == alice)
        .map(|e| (e.name, e.event_time - EPOCH))
        .collect();
    assert_eq!(
        times,
        [
            (EventName::Joined, 0),
            (EventName::PublishStarted, 0),
            (EventName::PublishStopped, 90_000),
            (EventName::Left, 90_000)
        ]
    );
    let session = &w.store.sessions(&w.stage.arn).await[0];
    assert_eq!(
        (session.start_time, session.end_time),
        (EPOCH, Some(EPOCH + 90_000))
    );
}

#[tokio::test]
async fn a_token_expires_on_the_clock() {
    let w = world().await;
    let issued = w
        .control
        .create_participant_token(
            &account(),
            &w.stage.arn.to_string(),
            TokenRequest {
                duration_minutes: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(issued.expiration_time, EPOCH + 60_000);
    w.clock.advance(Duration::from_secs(59));
    w.live
        .open_events(issued.token.clone(), w.stage.arn.id.clone(), None)
        .await
        .unwrap();
    w.clock.advance(Duration::from_secs(1));
    let refusal = w
        .live
        .publish(issued.token, "offer".into(), None)
        .await
        .unwrap_err();
    assert!(matches!(refusal.kind, RefusalKind::Token(_)), "{refusal:?}");
}

/// DECISIONS.md: a join the store cannot record is refused (an internal error) and
/// the connection taken down, rather than left on a stage the record knows nothing of.
#[tokio::test]
async fn a_join_the_store_cannot_record_is_refused_and_taken_down() {
    let w = world().await;
    let (alice, token) = w.both().await;
    w.store.fail_live_writes(true);

    let refusal = w
        .live
        .publish(token.clone(), "offer".into(), None)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Internal);
    assert_eq!(
        w.media.calls(),
        [
            MediaCall::Publish(SourceId(1), w.media.peer(0)),
            MediaCall::CloseSource(SourceId(1))
        ],
        "the peer that was answered is closed again"
    );
    let refusal = w
        .live
        .open_events(token.clone(), w.stage.arn.id.clone(), None)
        .await
        .err()
        .unwrap();
    assert_eq!(refusal.kind, RefusalKind::Internal);
    assert_eq!(w.live.live_stage_count(), 0, "nobody is on the stage");
    assert_eq!(w.store.running_session(&w.stage.arn).await, None);
    assert!(w.store.live_writes().is_empty());

    // The store is back: the same participant joins, and the record is whole.
    w.store.fail_live_writes(false);
    w.live.publish(token, "offer".into(), None).await.unwrap();
    assert_eq!(w.store.events_of(&alice), ["JOINED", "PUBLISH_STARTED"]);
    let stored: Vec<EventName> = w
        .store
        .stored_events(&w.stage.arn, &alice)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(stored, [EventName::Joined, EventName::PublishStarted]);
    assert!(w.store.running_session(&w.stage.arn).await.is_some());
}
