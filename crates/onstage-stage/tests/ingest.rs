//! Ingest configurations in the domain (BEHAVIOUR §10): what a stream key opens,
//! which refusals it gets, and the state a live stream gives its configuration.

use std::sync::Arc;

use onstage_stage::model::{IngestProtocol, IngestState};
use onstage_stage::service::{NewIngestConfiguration, NewStage, StreamKeyRefusal};
use onstage_stage::store::IngestFilter;
use onstage_stage::{ControlPlane, DomainError};
use onstage_testkit::{ManualClock, TestStore, account, control_plane};

async fn control() -> Arc<ControlPlane> {
    control_plane(Arc::new(TestStore::new().await), ManualClock::new()).await
}

async fn stage(control: &ControlPlane) -> String {
    let (stage, _) = control
        .create_stage(&account(), NewStage::default())
        .await
        .expect("CreateStage");
    stage.arn.to_string()
}

fn rtmps(stage: Option<String>) -> NewIngestConfiguration {
    NewIngestConfiguration {
        stage_arn: stage,
        ingest_protocol: Some(IngestProtocol::Rtmps),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_stream_key_opens_only_its_configuration() {
    let control = control().await;
    let stage = stage(&control).await;
    let secure = control
        .create_ingest_configuration(&account(), rtmps(Some(stage.clone())))
        .await
        .expect("create");
    let found = control
        .ingest_by_stream_key(&secure.stream_key, true)
        .await
        .expect("lookup");
    assert_eq!(found, Ok(secure.clone()));

    // A wrong secret, a key of nothing, garbage: all the same refusal.
    let wrong = format!("{}x", secure.stream_key);
    let mut other_id = secure.stream_key.clone();
    other_id.replace_range(
        other_id.find(&secure.arn.id).expect("id in key")..,
        "zzzzzzzzzzzz_secret",
    );
    for key in [wrong.as_str(), other_id.as_str(), "", "rt_garbage"] {
        assert_eq!(
            control
                .ingest_by_stream_key(key, true)
                .await
                .expect("lookup"),
            Err(StreamKeyRefusal::Invalid),
            "{key:?}"
        );
    }
    // Plain RTMP only when the configuration allows it.
    assert_eq!(
        control
            .ingest_by_stream_key(&secure.stream_key, false)
            .await
            .expect("lookup"),
        Err(StreamKeyRefusal::InsecureRefused(secure.arn.clone()))
    );
    let insecure = control
        .create_ingest_configuration(
            &account(),
            NewIngestConfiguration {
                insecure_ingest: Some(true),
                ..rtmps(Some(stage.clone()))
            },
        )
        .await
        .expect("create");
    assert!(
        control
            .ingest_by_stream_key(&insecure.stream_key, false)
            .await
            .expect("lookup")
            .is_ok()
    );
    // No stage: refused.
    let loose = control
        .create_ingest_configuration(&account(), rtmps(None))
        .await
        .expect("create");
    assert_eq!(
        control
            .ingest_by_stream_key(&loose.stream_key, true)
            .await
            .expect("lookup"),
        Err(StreamKeyRefusal::NoStage(loose.arn.clone()))
    );
}

#[tokio::test]
async fn a_live_configuration_is_active_and_deleted_only_with_force() {
    let control = control().await;
    let stage = stage(&control).await;
    let c = control
        .create_ingest_configuration(&account(), rtmps(Some(stage.clone())))
        .await
        .expect("create");
    let stage_arn = onstage_stage::Arn::parse(&stage).expect("stage ARN");
    control
        .ingest_stream_changed(&c.arn, Some((&stage_arn, "st-1")), 1)
        .await
        .expect("live");
    let got = control
        .get_ingest_configuration(&account(), &c.arn.to_string())
        .await
        .expect("get");
    assert_eq!(got.state, IngestState::Active);
    let active = control
        .list_ingest_configurations(
            &account(),
            IngestFilter {
                state: Some(IngestState::Active),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(active.items.len(), 1);

    let refused = control
        .delete_ingest_configuration(&account(), &c.arn.to_string(), false)
        .await;
    assert!(
        matches!(&refused, Err(DomainError::Conflict(m)) if m.contains("force")),
        "{refused:?}"
    );
    control
        .delete_ingest_configuration(&account(), &c.arn.to_string(), true)
        .await
        .expect("forced delete");
    assert!(matches!(
        control
            .get_ingest_configuration(&account(), &c.arn.to_string())
            .await,
        Err(DomainError::NotFound(_))
    ));
}

#[tokio::test]
async fn create_refuses_what_the_model_cannot() {
    let control = control().await;
    let no_protocol = control
        .create_ingest_configuration(&account(), NewIngestConfiguration::default())
        .await;
    assert!(
        matches!(&no_protocol, Err(DomainError::Validation(m)) if m.contains("ingestProtocol")),
        "{no_protocol:?}"
    );
    let redundant = control
        .create_ingest_configuration(
            &account(),
            NewIngestConfiguration {
                redundant_ingest: Some(true),
                ..rtmps(None)
            },
        )
        .await;
    assert!(
        matches!(&redundant, Err(DomainError::Validation(m)) if m.contains("redundantIngest")),
        "{redundant:?}"
    );
}
