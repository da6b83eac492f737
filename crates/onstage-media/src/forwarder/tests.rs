//! The forwarder with real str0m peers, in virtual time (see `harness.rs`).

use std::time::{Duration, Instant};

use onstage_stage::media::{
    CloseCause, FedKind, FedPacket, MediaRefusal, MediaSignal, PeerId, SourceId,
};
use str0m::Rtc;
use str0m::media::MediaKind;

use super::harness::{Net, Received};
use super::{Control, Forwarder, MAX_ADDRESSES_PER_PEER, NewRole, Output, Timeouts};
use crate::VideoCodec;
use crate::placement::peer_id;

const MS: Duration = Duration::from_millis(1);

/// Sequence numbers and timestamps run on without a jump back or a gap.
fn assert_one_stream(video: &[Received]) {
    for pair in video.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "sequence numbers jump: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
        assert!(
            pair[1].time.wrapping_sub(pair[0].time) < 1 << 31,
            "timestamps go back: {} then {}",
            pair[0].time,
            pair[1].time
        );
    }
}

#[test]
fn connected_peers_are_signalled() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    for c in [publisher, subscriber] {
        let peer = net.clients[c].peer;
        assert!(net.signals.contains(&MediaSignal::Connected(peer)));
    }
}

#[test]
fn a_subscribers_video_begins_at_a_keyframe() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    for _ in 0..3 {
        net.video_frame(publisher, false, 3);
    }
    assert!(
        net.video_received(subscriber).is_empty(),
        "video before a keyframe reached the subscriber"
    );
    net.video_frame(publisher, true, 4);
    let keyframe = net.clients[publisher].frames;
    net.video_frame(publisher, false, 3);
    let video = net.video_received(subscriber);
    assert_eq!(video.len(), 7);
    assert!(video[0].starts_keyframe());
    assert_eq!(video[0].frame(), keyframe);
    assert_one_stream(&video);
}

#[test]
fn a_subscriber_waiting_for_a_keyframe_asks_the_publisher_for_one() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let _subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    net.clients[publisher].keyframe_requests.clear();
    net.video_frame(publisher, false, 2);
    net.run_for(200 * MS);
    assert!(
        !net.clients[publisher].keyframe_requests.is_empty(),
        "the publisher was not asked for a keyframe"
    );
}

#[test]
fn keyframe_requests_are_paced_per_source_and_postponed_not_dropped() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let _subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    net.run_for(300 * MS);
    net.clients[publisher].keyframe_requests.clear();
    let t0 = net.now;
    for _ in 0..3 {
        net.control(0, Control::RequestKeyframe(SourceId(1)));
        net.run_for(10 * MS);
    }
    net.run_for(400 * MS);
    let asked = &net.clients[publisher].keyframe_requests;
    assert_eq!(asked.len(), 2, "asked at {:?}", offsets(t0, asked));
    assert!(asked[0] < t0 + 10 * MS, "the first request was held back");
    assert!(
        asked[1] >= asked[0] + 100 * MS,
        "two requests inside the interval: {:?}",
        offsets(t0, asked)
    );
    assert!(
        asked[1] <= asked[0] + 110 * MS,
        "the postponed request came late"
    );
}

fn offsets(t0: Instant, at: &[Instant]) -> Vec<Duration> {
    at.iter().map(|t| t.saturating_duration_since(t0)).collect()
}

#[test]
fn a_replaced_publisher_continues_the_subscribers_stream() {
    let mut net = Net::new(2);
    let source = SourceId(2);
    let first = net.publish(source);
    let here = net.subscribe(source, 0);
    let there = net.subscribe(source, 1);
    net.connect();
    net.video_frame(first, true, 3);
    net.video_frame(first, false, 2);
    let second = net.publish(source);
    net.connect();
    assert_eq!(
        net.closed(net.clients[first].peer),
        Some(CloseCause::Requested)
    );
    net.video_frame(second, false, 2);
    net.video_frame(second, true, 3);
    net.video_frame(second, false, 2);
    for sub in [here, there] {
        let video = net.video_received(sub);
        assert_eq!(video.len(), 5 + 5, "subscriber {sub}");
        assert!(video[5].starts_keyframe(), "restarted off a keyframe");
        assert_one_stream(&video);
    }
}

#[test]
fn packets_reach_subscribers_on_another_shard_once_per_shard() {
    let mut net = Net::new(2);
    let source = SourceId(2);
    let publisher = net.publish(source);
    let subs: Vec<usize> = (0..3).map(|_| net.subscribe(source, 1)).collect();
    net.connect();
    let before = net.packets_between_shards;
    net.video_frame(publisher, true, 3);
    net.video_frame(publisher, false, 2);
    for _ in 0..4 {
        net.audio_packet(publisher);
    }
    assert_eq!(net.packets_between_shards - before, 9);
    for &s in &subs {
        assert_eq!(net.video_received(s).len(), 5);
        assert_eq!(net.clients[s].received.len(), 9);
    }
}

#[test]
fn a_shard_whose_last_subscriber_left_gets_no_more_packets() {
    let mut net = Net::new(2);
    let source = SourceId(2);
    let publisher = net.publish(source);
    let subscriber = net.subscribe(source, 1);
    net.connect();
    net.video_frame(publisher, true, 2);
    assert!(net.packets_between_shards > 0);
    let peer = net.clients[subscriber].peer;
    net.control(1, Control::ClosePeer(peer));
    let before = net.packets_between_shards;
    net.video_frame(publisher, false, 2);
    assert_eq!(net.packets_between_shards, before);
}

#[test]
fn a_lost_packet_is_resent_from_the_subscribers_cache() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    net.video_frame(publisher, true, 3);
    net.drop_next_over(subscriber, 500);
    net.video_frame(publisher, false, 3);
    for _ in 0..10 {
        net.video_frame(publisher, false, 2);
    }
    net.run_for(500 * MS);
    assert_eq!(net.clients[subscriber].dropped, 1);
    let mut seqs: Vec<u64> = net
        .video_received(subscriber)
        .iter()
        .map(|r| r.seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        26,
        "every packet arrived, the lost one resent: {seqs:?}"
    );
    assert_eq!(seqs[25] - seqs[0], 25);
}

#[test]
fn a_peer_that_goes_silent_is_closed_after_the_silence_timeout() {
    let timeouts = Timeouts {
        connect: Duration::from_secs(20),
        silence: Duration::from_secs(2),
    };
    let mut net = Net::with_timeouts(1, timeouts);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    net.clients[subscriber].mute = true;
    net.run_for(Duration::from_millis(1500));
    let peer = net.clients[subscriber].peer;
    assert_eq!(net.closed(peer), None, "closed before the timeout");
    net.run_for(Duration::from_millis(2000));
    assert_eq!(net.closed(peer), Some(CloseCause::Timeout));
    assert_eq!(net.closed(net.clients[publisher].peer), None);
}

#[test]
fn a_peer_that_never_connects_is_closed_after_the_connect_timeout() {
    let timeouts = Timeouts {
        connect: Duration::from_secs(3),
        silence: Duration::from_secs(12),
    };
    let mut net = Net::with_timeouts(1, timeouts);
    let publisher = net.publish(SourceId(1));
    net.clients[publisher].mute = true;
    let peer = net.clients[publisher].peer;
    net.run_for(Duration::from_millis(2800));
    assert_eq!(net.closed(peer), None, "closed before the timeout");
    net.run_for(Duration::from_millis(1500));
    assert_eq!(net.closed(peer), Some(CloseCause::Timeout));
    assert_eq!(net.forwarders[0].peer_count(), 0);
}

#[test]
fn subscribers_of_a_source_without_a_feeder_get_the_next_feeders_media() {
    // A replicated publisher drops; its source stays open for the reconnect
    // window, and the replica's subscribers (here, one on another shard) wait.
    let mut net = Net::new(2);
    let source = SourceId(2);
    let first = net.publish(source);
    let early = net.subscribe(source, 0);
    net.connect();
    net.video_frame(first, true, 2);
    let peer = net.clients[first].peer;
    net.control(0, Control::ClosePeer(peer));
    assert_eq!(net.closed(peer), Some(CloseCause::Requested));
    let replica = net.subscribe(source, 1);
    let second = net.publish(source);
    net.connect();
    net.video_frame(second, false, 2);
    net.video_frame(second, true, 3);
    assert_eq!(net.closed(net.clients[early].peer), None);
    assert_eq!(net.video_received(early).len(), 2 + 3);
    let video = net.video_received(replica);
    assert_eq!(video.len(), 3);
    assert!(video[0].starts_keyframe());
}

#[test]
fn audio_goes_into_the_audio_line_and_video_into_the_video_line() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    net.video_frame(publisher, true, 2);
    for _ in 0..5 {
        net.audio_packet(publisher);
    }
    net.video_frame(publisher, false, 2);
    let received = &net.clients[subscriber].received;
    let audio: Vec<&Received> = received
        .iter()
        .filter(|r| r.kind == MediaKind::Audio)
        .collect();
    let video: Vec<&Received> = received
        .iter()
        .filter(|r| r.kind == MediaKind::Video)
        .collect();
    assert_eq!(audio.len(), 5);
    assert_eq!(video.len(), 4);
    assert!(audio.iter().all(|r| r.payload.len() == 80));
    assert!(video.iter().all(|r| r.payload.len() == 600));
}

#[test]
fn a_subscriber_without_a_video_line_gets_audio_only() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe_lines(SourceId(1), 0, &[MediaKind::Audio]);
    net.connect();
    net.video_frame(publisher, true, 2);
    net.audio_packet(publisher);
    net.audio_packet(publisher);
    let received = &net.clients[subscriber].received;
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.payload.len() == 80));
}

#[test]
fn closing_a_source_closes_its_publisher_and_every_subscriber() {
    let mut net = Net::new(2);
    let source = SourceId(2);
    let publisher = net.publish(source);
    let here = net.subscribe(source, 0);
    let there = net.subscribe(source, 1);
    net.connect();
    net.control(0, Control::CloseSource(source));
    net.control(1, Control::CloseSource(source));
    assert_eq!(
        net.closed(net.clients[publisher].peer),
        Some(CloseCause::Requested)
    );
    for sub in [here, there] {
        assert_eq!(
            net.closed(net.clients[sub].peer),
            Some(CloseCause::SourceClosed)
        );
    }
    assert_eq!(net.forgotten.len(), 3);
    assert!(net.forwarders.iter().all(|f| f.peer_count() == 0));
}

#[test]
fn a_closed_subscriber_stops_receiving_and_the_others_go_on() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let leaving = net.subscribe(SourceId(1), 0);
    let staying = net.subscribe(SourceId(1), 0);
    net.connect();
    net.video_frame(publisher, true, 2);
    let peer = net.clients[leaving].peer;
    net.control(0, Control::ClosePeer(peer));
    assert_eq!(net.closed(peer), Some(CloseCause::Requested));
    net.video_frame(publisher, false, 2);
    assert_eq!(net.video_received(leaving).len(), 2);
    assert_eq!(net.video_received(staying).len(), 4);
}

#[test]
fn a_subscriber_of_a_source_unknown_at_home_is_refused() {
    let now = Instant::now();
    let local = "10.0.0.1:7701".parse().expect("an address");
    let mut f = Forwarder::new(0, 1, local, Timeouts::default(), now);
    let rtc = Box::new(Rtc::builder().build(now));
    let result = f.add_peer(
        now,
        peer_id(1, 0),
        rtc,
        NewRole::Subscriber {
            source: SourceId(9),
        },
        "ufrag".into(),
    );
    assert!(matches!(result, Err(MediaRefusal::NoSuchSource)));
    assert!(matches!(f.poll_output(), Some(Output::Forget { ufrag, .. }) if ufrag == "ufrag"));
}

#[test]
fn a_publisher_away_from_its_sources_home_is_refused() {
    let now = Instant::now();
    let local = "10.0.0.1:7701".parse().expect("an address");
    let mut f = Forwarder::new(1, 2, local, Timeouts::default(), now);
    let rtc = Box::new(Rtc::builder().build(now));
    let result = f.add_peer(
        now,
        peer_id(1, 1),
        rtc,
        NewRole::Publisher {
            source: SourceId(2),
        },
        "ufrag".into(),
    );
    assert!(matches!(result, Err(MediaRefusal::Internal(_))));
    assert_eq!(f.peer_count(), 0);
}

/// `check` with one byte of its MESSAGE-INTEGRITY changed (as a check signed
/// with the wrong password would be) and its FINGERPRINT made right again, so
/// only the integrity check can refuse it.
fn with_wrong_integrity(check: &[u8]) -> Vec<u8> {
    const MESSAGE_INTEGRITY: u16 = 0x0008;
    const FINGERPRINT: u16 = 0x8028;
    let mut m = check.to_vec();
    let mut at = 20;
    let mut signed = false;
    while at + 4 <= m.len() {
        let kind = u16::from_be_bytes([m[at], m[at + 1]]);
        let len = u16::from_be_bytes([m[at + 2], m[at + 3]]) as usize;
        if kind == MESSAGE_INTEGRITY {
            m[at + 4] ^= 0xff;
            signed = true;
        }
        if kind == FINGERPRINT {
            let original = crc32(&check[..at]) ^ 0x5354_554e;
            assert_eq!(
                m[at + 4..at + 8],
                original.to_be_bytes(),
                "FINGERPRINT computed as str0m does"
            );
            let crc = crc32(&m[..at]) ^ 0x5354_554e;
            m[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    assert!(signed, "the check carries no MESSAGE-INTEGRITY");
    m
}

/// CRC-32 (IEEE), as STUN's FINGERPRINT uses it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_check_with_the_wrong_password_teaches_no_address() {
    let mut net = Net::new(1);
    let _publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    let check = net.steal_check(subscriber);
    let stranger = "10.0.9.9:5000".parse().expect("an address");
    net.deliver(0, stranger, &with_wrong_integrity(&check));
    assert!(net.learned.is_empty(), "learned {:?}", net.learned);
    // The same check as signed is accepted: only the integrity differed.
    net.deliver(0, stranger, &check);
    assert_eq!(net.learned, vec![(net.clients[subscriber].peer, stranger)]);
}

#[test]
fn a_valid_check_from_another_peers_address_does_not_take_it() {
    let mut net = Net::new(1);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    net.connect();
    let attacker = net.subscribe(SourceId(1), 0);
    let check = net.steal_check(attacker);
    net.learned.clear();
    // The attacker's own check, with its own valid integrity, from the
    // publisher's address: the publisher's Rtc gets it and refuses the ufrag.
    let publisher_addr = net.clients[publisher].addr;
    for _ in 0..3 {
        net.deliver(0, publisher_addr, &check);
    }
    assert!(net.learned.is_empty(), "learned {:?}", net.learned);
    net.video_frame(publisher, true, 4);
    net.video_frame(publisher, false, 3);
    net.run_for(50 * MS);
    assert_eq!(net.video_received(subscriber).len(), 7);
}

#[test]
fn a_peer_is_learned_at_a_bounded_number_of_addresses() {
    let mut net = Net::new(1);
    let _publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 0);
    let check = net.steal_check(subscriber);
    for i in 0..MAX_ADDRESSES_PER_PEER + 10 {
        let from = std::net::SocketAddr::from(([10, 0, 9, (i % 250) as u8], 5000 + i as u16));
        net.deliver(0, from, &check);
    }
    assert_eq!(net.learned.len(), MAX_ADDRESSES_PER_PEER as usize);
}

#[test]
fn a_tapped_source_outputs_each_packet_once_more_until_it_closes() {
    let mut net = Net::new(2);
    let publisher = net.publish(SourceId(1));
    let subscriber = net.subscribe(SourceId(1), 1);
    net.connect();
    let home = crate::placement::home_of(SourceId(1), 2);
    net.video_frame(publisher, true, 3);
    assert!(
        net.tapped.is_empty(),
        "an untapped source outputs nothing for a tap"
    );
    net.control(
        home,
        Control::Tap {
            source: SourceId(1),
            on: true,
        },
    );
    net.video_frame(publisher, true, 3);
    net.video_frame(publisher, false, 2);
    net.audio_packet(publisher);
    assert_eq!(net.tapped.len(), 6);
    assert!(net.tapped.iter().all(|(s, _)| *s == SourceId(1)));
    assert!(net.tapped[0].1, "the keyframe's start is marked");
    // The subscriber on the other shard got the same video.
    assert_eq!(net.video_received(subscriber).len(), 3 + 3 + 2);
    net.control(home, Control::CloseSource(SourceId(1)));
    assert_eq!(net.untapped, [SourceId(1)]);
}

/// A fed (RTMP-bridged) video packet: the frame's number after a byte that says
/// whether it starts a keyframe.
fn fed_video(frame: u32, index: u8, key: bool, last: bool) -> FedPacket {
    let mut payload = vec![if key && index == 0 { 24 } else { 28 }, index];
    payload.extend_from_slice(&frame.to_be_bytes());
    payload.resize(500, 0x5a);
    FedPacket {
        kind: FedKind::Video,
        time: frame * 3000,
        marker: last,
        keyframe_start: key && index == 0,
        payload: payload.into(),
    }
}

fn fed_frame(net: &mut Net, source: SourceId, feeder: PeerId, frame: u32, key: bool) {
    for i in 0..3u8 {
        net.push_fed(source, feeder, fed_video(frame, i, key, i == 2));
    }
    net.push_fed(
        source,
        feeder,
        FedPacket {
            kind: FedKind::Audio,
            time: frame * 1600,
            marker: false,
            keyframe_start: false,
            payload: vec![0xfc; 60].into(),
        },
    );
    net.run_for(33 * MS);
}

fn fed_frame_number(r: &Received) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&r.payload[2..6]);
    u32::from_be_bytes(b)
}

#[test]
fn fed_packets_reach_subscribers_on_every_shard_from_a_keyframe() {
    let mut net = Net::new(2);
    net.video_codecs = vec![VideoCodec::H264];
    let source = SourceId(1);
    let (feeder, link) = net.feed(source);
    let here = net.subscribe(source, 1);
    let there = net.subscribe(source, 0);
    net.connect();
    fed_frame(&mut net, source, feeder, 1, false);
    fed_frame(&mut net, source, feeder, 2, false);
    for c in [here, there] {
        assert!(net.video_received(c).is_empty(), "video before a keyframe");
    }
    net.run_for(150 * MS);
    assert!(
        link.take_keyframe_request(),
        "a waiting subscriber's keyframe request reaches the feeder"
    );
    fed_frame(&mut net, source, feeder, 3, true);
    fed_frame(&mut net, source, feeder, 4, false);
    for c in [here, there] {
        let video = net.video_received(c);
        assert_eq!(video.len(), 6, "client {c}");
        assert_eq!(video[0].payload[0], 24, "video begins at the keyframe");
        assert_eq!(fed_frame_number(&video[0]), 3);
        assert_eq!(fed_frame_number(&video[5]), 4);
        assert_eq!(video[0].payload.len(), 500, "the payload unchanged");
        assert_one_stream(&video);
        let audio = net.clients[c]
            .received
            .iter()
            .filter(|r| r.kind == MediaKind::Audio)
            .count();
        assert_eq!(audio, 4, "client {c}: audio starts anywhere");
    }
}

#[test]
fn closing_a_feeder_keeps_subscribers_and_closing_the_source_ends_them() {
    let mut net = Net::new(1);
    net.video_codecs = vec![VideoCodec::H264];
    let source = SourceId(1);
    let (feeder, link) = net.feed(source);
    let sub = net.subscribe(source, 0);
    net.connect();
    fed_frame(&mut net, source, feeder, 1, true);
    assert_eq!(net.video_received(sub).len(), 3);
    // The feeder's owner goes (its handle dropped): the publisher left.
    net.control(0, Control::ClosePeer(feeder));
    assert_eq!(net.closed(feeder), Some(CloseCause::Requested));
    assert!(link.is_closed());
    let sub_peer = net.clients[sub].peer;
    assert_eq!(
        net.closed(sub_peer),
        None,
        "the subscriber waits for a new feeder"
    );
    // A new feeder of the same source: its subscribers restart at its keyframe.
    let (again, _link) = net.feed(source);
    fed_frame(&mut net, source, again, 10, false);
    assert_eq!(net.video_received(sub).len(), 3);
    fed_frame(&mut net, source, again, 11, true);
    let video = net.video_received(sub);
    assert_eq!(video.len(), 6);
    assert_one_stream(&video);
    // A stale feeder's packets go nowhere.
    fed_frame(&mut net, source, feeder, 2, true);
    assert_eq!(net.video_received(sub).len(), 6);
    net.control(0, Control::CloseSource(source));
    assert_eq!(net.closed(sub_peer), Some(CloseCause::SourceClosed));
    assert_eq!(net.closed(again), Some(CloseCause::Requested));
    assert!(
        _link.is_closed(),
        "the feeder's owner learns the source closed"
    );
}

#[test]
fn fed_packets_of_a_tapped_source_reach_the_tap() {
    let mut net = Net::new(1);
    let source = SourceId(1);
    let (feeder, _link) = net.feed(source);
    net.control(0, Control::Tap { source, on: true });
    fed_frame(&mut net, source, feeder, 1, true);
    assert_eq!(net.tapped.len(), 4);
    assert!(net.tapped[0].1, "the first packet starts a keyframe");
}
