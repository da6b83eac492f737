//! H.264 access units into RTP payloads (RFC 6184, packetization mode 1) without
//! transcoding: a NAL unit that fits is its own packet, a larger one is cut into
//! FU-A fragments; SPS and PPS go before every IDR (in one STAP-A when they fit), so
//! a subscriber that starts at any keyframe can decode; the marker is set on the
//! access unit's last packet.

/// Payload bytes per RTP packet: with the RTP header, SRTP's tag and an extension
/// or two this stays under a 1,280-byte path MTU.
pub const MAX_PAYLOAD: usize = 1_100;

const FU_A: u8 = 28;
const STAP_A: u8 = 24;

/// One RTP packet's payload and whether it ends the access unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPayload {
    pub payload: Vec<u8>,
    pub marker: bool,
}

pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Packetizes one access unit, appending to `out`. `parameter_sets` (SPS then PPS)
/// are sent first when the unit holds an IDR slice. Empty NAL units are skipped.
pub fn access_unit(nals: &[&[u8]], parameter_sets: &[&[u8]], out: &mut Vec<RtpPayload>) {
    let start = out.len();
    let has_sets = parameter_sets.iter().all(|s| !s.is_empty()) && !parameter_sets.is_empty();
    if has_sets && nals.iter().any(|n| nal_type(n) == 5) {
        sets(parameter_sets, out);
    }
    for nal in nals {
        if nal.is_empty() {
            continue;
        }
        // Parameter sets and AUDs in the stream itself: SPS/PPS are sent from the
        // configuration before each IDR; an AUD means nothing to WebRTC.
        match nal_type(nal) {
            9 => continue,
            7 | 8 if has_sets => continue,
            _ => {}
        }
        single_or_fragments(nal, out);
    }
    if let Some(last) = out[start..].last_mut() {
        last.marker = true;
    }
}

fn sets(parameter_sets: &[&[u8]], out: &mut Vec<RtpPayload>) {
    let total: usize = parameter_sets.iter().map(|s| s.len() + 2).sum::<usize>() + 1;
    let fits = parameter_sets
        .iter()
        .all(|s| s.len() <= usize::from(u16::MAX));
    if total <= MAX_PAYLOAD && fits {
        let nri = parameter_sets
            .iter()
            .filter_map(|s| s.first())
            .map(|b| b & 0x60)
            .max()
            .unwrap_or(0x60);
        let mut payload = Vec::with_capacity(total);
        payload.push(nri | STAP_A);
        for s in parameter_sets {
            payload.extend_from_slice(&(s.len() as u16).to_be_bytes());
            payload.extend_from_slice(s);
        }
        out.push(RtpPayload {
            payload,
            marker: false,
        });
    } else {
        for s in parameter_sets {
            single_or_fragments(s, out);
        }
    }
}

fn single_or_fragments(nal: &[u8], out: &mut Vec<RtpPayload>) {
    if nal.len() <= MAX_PAYLOAD {
        out.push(RtpPayload {
            payload: nal.to_vec(),
            marker: false,
        });
        return;
    }
    let header = nal[0];
    let indicator = (header & 0xe0) | FU_A;
    let body = &nal[1..];
    let chunks = body.chunks(MAX_PAYLOAD - 2);
    let n = chunks.len();
    for (i, chunk) in chunks.enumerate() {
        let mut fu = header & 0x1f;
        if i == 0 {
            fu |= 0x80;
        }
        if i + 1 == n {
            fu |= 0x40;
        }
        let mut payload = Vec::with_capacity(chunk.len() + 2);
        payload.push(indicator);
        payload.push(fu);
        payload.extend_from_slice(chunk);
        out.push(RtpPayload {
            payload,
            marker: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes the packetization, as a receiver's depacketizer does.
    fn depacketize(packets: &[RtpPayload]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut partial: Option<Vec<u8>> = None;
        for p in packets {
            let b = &p.payload;
            match b[0] & 0x1f {
                STAP_A => {
                    let mut rest = &b[1..];
                    while rest.len() >= 2 {
                        let len = usize::from(rest[0]) << 8 | usize::from(rest[1]);
                        nals.push(rest[2..2 + len].to_vec());
                        rest = &rest[2 + len..];
                    }
                }
                FU_A => {
                    if b[1] & 0x80 != 0 {
                        partial = Some(vec![(b[0] & 0xe0) | (b[1] & 0x1f)]);
                    }
                    let nal = partial.as_mut().expect("a start fragment first");
                    nal.extend_from_slice(&b[2..]);
                    if b[1] & 0x40 != 0 {
                        nals.push(partial.take().expect("started"));
                    }
                }
                _ => nals.push(b.clone()),
            }
        }
        nals
    }

    #[test]
    fn an_idr_gets_the_parameter_sets_first_and_large_units_are_fragmented() {
        let sps = [0x67, 1, 2, 3];
        let pps = [0x68, 4];
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..5000u32).map(|i| i as u8))
            .collect();
        let sei = [0x06, 9, 9];
        let aud = [0x09, 0xf0];
        let mut out = Vec::new();
        access_unit(
            &[&aud[..], &sps[..], &pps[..], &sei[..], &idr[..]],
            &[&sps, &pps],
            &mut out,
        );
        assert_eq!(out[0].payload[0] & 0x1f, STAP_A);
        assert!(out.iter().all(|p| p.payload.len() <= MAX_PAYLOAD));
        assert_eq!(
            out.iter().filter(|p| p.marker).count(),
            1,
            "one marker, on the last packet"
        );
        assert!(out.last().unwrap().marker);
        assert_eq!(
            depacketize(&out),
            vec![sps.to_vec(), pps.to_vec(), sei.to_vec(), idr]
        );
    }

    #[test]
    fn a_non_idr_unit_is_sent_as_is() {
        let p = [0x41, 7, 7];
        let mut out = Vec::new();
        access_unit(&[&p[..]], &[&[0x67, 1], &[0x68, 2]], &mut out);
        assert_eq!(
            out,
            vec![RtpPayload {
                payload: p.to_vec(),
                marker: true
            }]
        );
    }
}
