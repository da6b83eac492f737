//! Domain values with plain defaults, for tests that need a record to store or
//! compare: change what the test is about with struct-update syntax
//! (`Participant { published: true, ..participant("p1") }`).

use onstage_stage::ids::{Account, Arn, ResourceKind};
use onstage_stage::model::{
    Attributes, ClientAttributes, EventName, Participant, ParticipantEvent, ParticipantProtocol,
    ParticipantReplica, ParticipantState, RecordingState, ReplicationState, ReplicationType, Tags,
};
use onstage_stage::store::ResourceRecord;
use serde_json::json;

/// When the fixtures' records were created and their participants first joined.
pub const CREATED_AT: i64 = 1_700_000_000_000;

/// An account in a region.
pub fn account_in(id: &str, region: &str) -> Account {
    Account {
        id: id.into(),
        region: region.into(),
    }
}

pub fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A resource of `kind` named after its id, untagged, created at [`CREATED_AT`].
pub fn record(account: &Account, kind: ResourceKind, id: &str) -> ResourceRecord {
    ResourceRecord {
        arn: Arn::new(account, kind, id),
        tags: Tags::new(),
        created_at: CREATED_AT,
        body: json!({ "name": id }),
        unique_key: None,
        refers_to: None,
        active_session_id: None,
    }
}

/// A connected WHIP participant that has not published, joined a second after
/// [`CREATED_AT`], without user id or attributes.
pub fn participant(participant_id: &str) -> Participant {
    Participant {
        participant_id: participant_id.into(),
        user_id: None,
        state: ParticipantState::Connected,
        first_join_time: CREATED_AT + 1_000,
        attributes: Attributes::new(),
        published: false,
        client: ClientAttributes::default(),
        recording_state: RecordingState::Disabled,
        recording: None,
        protocol: ParticipantProtocol::Whip,
        ingest_configuration_arn: None,
        replication_type: ReplicationType::None,
        replication_state: None,
        source_stage_arn: None,
        source_session_id: None,
    }
}

/// An event `name` (its wire name, e.g. `"JOINED"`) of a participant at a time.
pub fn event(participant_id: &str, name: &str, event_time: i64) -> ParticipantEvent {
    let Some(name) = EventName::parse(name) else {
        panic!("{name:?} is not an event name");
    };
    ParticipantEvent {
        name,
        participant_id: participant_id.into(),
        event_time,
        remote_participant_id: None,
        error_code: None,
        destination_stage_arn: None,
        destination_session_id: None,
        replica: false,
    }
}

/// A replication of `participant_id` from `source` (in `source_session`) to
/// `destination` (in `destination_session`).
pub fn replica(
    source: &Arn,
    participant_id: &str,
    source_session: &str,
    destination: &Arn,
    destination_session: &str,
    state: ReplicationState,
) -> ParticipantReplica {
    ParticipantReplica {
        source_stage_arn: source.to_string(),
        participant_id: participant_id.into(),
        source_session_id: source_session.into(),
        destination_stage_arn: destination.to_string(),
        destination_session_id: destination_session.into(),
        replication_state: state,
    }
}
