//! Where peers and sources live: a peer id names its shard, a source id its
//! home shard (where its publisher is placed), and the ids are hashed cheaply.

use onstage_stage::media::{PeerId, SourceId};

/// Bits of a [`PeerId`] that name its shard: the id alone says where a peer lives.
const SHARD_BITS: u32 = 8;
/// Most shards a media plane runs.
pub(crate) const MAX_SHARDS: usize = 1 << SHARD_BITS;

pub(crate) fn peer_id(sequence: u64, shard: usize) -> PeerId {
    PeerId((sequence << SHARD_BITS) | shard as u64)
}

pub(crate) fn shard_of_peer(peer: PeerId, shards: usize) -> usize {
    (peer.0 & (MAX_SHARDS as u64 - 1)) as usize % shards
}

/// The shard that is home to a source: where its publisher is placed.
pub(crate) fn home_of(source: SourceId, shards: usize) -> usize {
    (source.0 % shards as u64) as usize
}

/// Hashing for the maps keyed by our own ids (a peer is looked up for every
/// packet and subscriber): one multiply spreads the bits, where the standard
/// library's SipHash, built to resist chosen keys, costs more and protects
/// nothing here — the server picks these ids, not a peer.
pub(crate) type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The product's high bits depend on every input bit; the table indexes
        // by the low bits (a peer id's low bits are its shard, the same for all).
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = spread(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = spread(self.0 ^ n);
    }
}

/// Multiplies by 2^64 / φ (Fibonacci hashing): nearby inputs land far apart in
/// the high bits. Used wherever an id needs scattering.
pub(crate) fn spread(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_id_names_its_shard() {
        for shard in [0, 1, 7, MAX_SHARDS - 1] {
            let id = peer_id(12_345, shard);
            assert_eq!(shard_of_peer(id, MAX_SHARDS), shard);
            assert_ne!(peer_id(12_346, shard), id);
        }
    }

    #[test]
    fn sources_spread_over_homes() {
        let homes: Vec<usize> = (1..=6).map(|s| home_of(SourceId(s), 3)).collect();
        assert_eq!(homes, vec![1, 2, 0, 1, 2, 0]);
    }
}
