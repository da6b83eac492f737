//! A media plane without media.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use onstage_stage::media::{MediaPlane, MediaRefusal, PeerId, SourceId};

/// What the fake media plane was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaCall {
    Publish(SourceId, PeerId),
    Subscribe(SourceId, PeerId),
    ClosePeer(PeerId),
    CloseSource(SourceId),
    Keyframe(SourceId),
}

/// Answers every offer with a minimal SDP whose session name is `answer-<peer id>`,
/// or refuses it as told. Ids come in
/// a fixed order: sources count from 1, peers from 101, from one shared counter
/// (the first publish of a test is source 1, peer 102... see [`FakeMedia::peer`]).
#[derive(Default)]
pub struct FakeMedia {
    next_id: AtomicU64,
    calls: Mutex<Vec<MediaCall>>,
    refuse_next: Mutex<Option<MediaRefusal>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeMedia {
    pub fn calls(&self) -> Vec<MediaCall> {
        lock(&self.calls).clone()
    }

    /// The next publish or subscribe is refused with `refusal`.
    pub fn refuse_next(&self, refusal: MediaRefusal) {
        *lock(&self.refuse_next) = Some(refusal);
    }

    pub fn closed_peers(&self) -> Vec<PeerId> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                MediaCall::ClosePeer(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    pub fn closed_sources(&self) -> Vec<SourceId> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                MediaCall::CloseSource(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// The peer of the n-th publish or subscribe answered (from 0).
    pub fn peer(&self, n: usize) -> PeerId {
        let peers: Vec<PeerId> = self
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                MediaCall::Publish(_, p) | MediaCall::Subscribe(_, p) => Some(p),
                _ => None,
            })
            .collect();
        match peers.get(n) {
            Some(p) => *p,
            None => panic!("only {} peers were answered, not {}", peers.len(), n + 1),
        }
    }

    fn answer(&self) -> Result<PeerId, MediaRefusal> {
        if let Some(refusal) = lock(&self.refuse_next).take() {
            return Err(refusal);
        }
        Ok(PeerId(self.next_id.fetch_add(1, Ordering::Relaxed) + 100))
    }

    fn log(&self, call: MediaCall) {
        lock(&self.calls).push(call);
    }
}

#[async_trait]
impl MediaPlane for FakeMedia {
    fn new_source(&self) -> SourceId {
        SourceId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn publish(
        &self,
        source: SourceId,
        _offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal> {
        let peer = self.answer()?;
        self.log(MediaCall::Publish(source, peer));
        Ok((peer, answer_sdp(peer)))
    }

    async fn subscribe(
        &self,
        source: SourceId,
        _offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal> {
        let peer = self.answer()?;
        self.log(MediaCall::Subscribe(source, peer));
        Ok((peer, answer_sdp(peer)))
    }

    fn close_peer(&self, peer: PeerId) {
        self.log(MediaCall::ClosePeer(peer));
    }

    fn close_source(&self, source: SourceId) {
        self.log(MediaCall::CloseSource(source));
    }

    fn request_keyframe(&self, source: SourceId) {
        self.log(MediaCall::Keyframe(source));
    }
}

fn answer_sdp(peer: PeerId) -> String {
    format!("v=0\r\ns=answer-{peer}\r\n")
}
