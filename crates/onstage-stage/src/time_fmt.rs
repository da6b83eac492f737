//! Wall-clock time as the domain sees it (what time it is comes from a
//! [`Clock`](crate::clock::Clock)): whole seconds or milliseconds since the
//! Unix epoch, and the one textual form the API uses (ISO 8601, UTC, with `Z`).

use time::OffsetDateTime;
use time::macros::format_description;

/// Milliseconds since the Unix epoch, UTC. Stored and compared as plain integers.
pub type UnixMillis = i64;

/// `2026-11-27T16:43:19Z`. botocore reads a time without zone as local time, so the
/// `Z` is never omitted.
pub fn iso8601(millis: UnixMillis) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_with_zulu() {
        assert_eq!(super::iso8601(1_795_797_799_000), "2026-11-27T16:43:19Z");
    }
}
