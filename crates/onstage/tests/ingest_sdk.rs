//! Ingest configurations (BEHAVIOUR §10) through aws-sdk-ivsrealtime against a real
//! `onstage serve`: the five operations, the SDK's typed enums and its paginator,
//! validation naming the field, DeleteStage detaching the configuration, and
//! persistence across a restart.

#[macro_use]
mod common;

use aws_sdk_ivsrealtime::types::{IngestConfigurationState, IngestProtocol};
use common::{ACCOUNT_ID, Server, arn_id, is_arn};

#[tokio::test]
async fn the_five_operations_through_the_sdk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_in(dir.path(), &[]).await;
    let client = server.client();
    let stage = client
        .create_stage()
        .name("ingest")
        .send()
        .await
        .expect("CreateStage")
        .stage
        .expect("stage");

    let created = client
        .create_ingest_configuration()
        .name("studio")
        .stage_arn(stage.arn())
        .user_id("encoder")
        .attributes("role", "host")
        .ingest_protocol(IngestProtocol::Rtmps)
        .tags("team", "video")
        .send()
        .await
        .expect("CreateIngestConfiguration")
        .ingest_configuration
        .expect("the configuration");
    assert!(is_arn(created.arn(), ACCOUNT_ID, "ingest-configuration"));
    assert_eq!(created.ingest_protocol(), &IngestProtocol::Rtmps);
    assert_eq!(created.stage_arn(), stage.arn());
    assert_eq!(created.state(), &IngestConfigurationState::Inactive);
    assert_eq!(created.user_id(), Some("encoder"));
    assert!(
        created.stream_key().starts_with(&format!(
            "rt_{ACCOUNT_ID}_us-east-1_{}_",
            arn_id(created.arn())
        )),
        "{}",
        created.stream_key()
    );

    let got = client
        .get_ingest_configuration()
        .arn(created.arn())
        .send()
        .await
        .expect("GetIngestConfiguration")
        .ingest_configuration
        .expect("the configuration");
    assert_eq!(got, created);

    // More than a page, through the SDK's paginator, filtered by stage.
    let mut arns = vec![created.arn().to_owned()];
    for _ in 0..3 {
        let c = client
            .create_ingest_configuration()
            .stage_arn(stage.arn())
            .ingest_protocol(IngestProtocol::Rtmp)
            .send()
            .await
            .expect("CreateIngestConfiguration")
            .ingest_configuration
            .expect("the configuration");
        arns.push(c.arn().to_owned());
    }
    let loose = client
        .create_ingest_configuration()
        .ingest_protocol(IngestProtocol::Rtmp)
        .send()
        .await
        .expect("CreateIngestConfiguration")
        .ingest_configuration
        .expect("the configuration");
    let listed: Vec<String> = client
        .list_ingest_configurations()
        .filter_by_stage_arn(stage.arn())
        .filter_by_state(IngestConfigurationState::Inactive)
        .max_results(2)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("ListIngestConfigurations")
        .iter()
        .map(|s| s.arn().to_owned())
        .collect();
    assert_eq!(listed, arns);
    let active = client
        .list_ingest_configurations()
        .filter_by_state(IngestConfigurationState::Active)
        .send()
        .await
        .expect("ListIngestConfigurations");
    assert!(active.ingest_configurations().is_empty());

    expect_failure!(
        client
            .create_ingest_configuration()
            .ingest_protocol(IngestProtocol::Rtmp)
            .name("has space")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["name"]);
    expect_failure!(
        client
            .create_ingest_configuration()
            .ingest_protocol(IngestProtocol::Rtmp)
            .attributes("big", "x".repeat(1100))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["attributes"]);

    let updated = client
        .update_ingest_configuration()
        .arn(loose.arn())
        .stage_arn(stage.arn())
        .send()
        .await
        .expect("UpdateIngestConfiguration")
        .ingest_configuration
        .expect("the configuration");
    assert_eq!(updated.stage_arn(), stage.arn());

    // DeleteStage leaves its configurations without a stage.
    client
        .delete_stage()
        .arn(stage.arn())
        .send()
        .await
        .expect("DeleteStage");
    let detached = client
        .get_ingest_configuration()
        .arn(created.arn())
        .send()
        .await
        .expect("GetIngestConfiguration")
        .ingest_configuration
        .expect("the configuration");
    assert_eq!(detached.stage_arn(), "");

    client
        .delete_ingest_configuration()
        .arn(loose.arn())
        .send()
        .await
        .expect("DeleteIngestConfiguration");
    expect_failure!(
        client
            .get_ingest_configuration()
            .arn(loose.arn())
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");

    // Persisted.
    server.stop();
    let server = Server::start_in(dir.path(), &[]).await;
    let after = server
        .client()
        .get_ingest_configuration()
        .arn(created.arn())
        .send()
        .await
        .expect("GetIngestConfiguration after a restart")
        .ingest_configuration
        .expect("the configuration");
    assert_eq!(after, detached);
    server.stop();
}
