//! What protecting one RTP packet costs with each SRTP suite onstage negotiates,
//! on the crypto backend the server runs (str0m 0.25 with `aws-lc-rs`).
//!
//! An SFU protects every copy it forwards: N subscribers means N protects per
//! input packet (plus one unprotect), so this per-packet figure bounds forwarding
//! throughput independently of the socket path that `onstage-loadtest raw`
//! measures.
//!
//! - `str0m/…` repeats what str0m's `SrtpContext::protect_rtp` does per packet,
//!   through the same public pieces: the cipher from
//!   `str0m::crypto::from_feature_flags()`'s SRTP provider, the suite's IV and
//!   HMAC framing from `str0m::crypto::{Aes128CmSha1_80, AeadAes128Gcm}`, the
//!   provider's HMAC-SHA1, and a freshly allocated output buffer.
//! - `aws-lc-rs-keyed/…` is the same computation straight on `aws-lc-rs` with the
//!   AES-CTR key and HMAC key set up once per stream instead of per packet, and
//!   in place: what the CM suite could cost if the backend cached its keys.
//!
//! Run: `cargo bench -p onstage-loadtest --bench srtp` (pin with `taskset -c 0`).

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use str0m::crypto::{AeadAes128Gcm, Aes128CmSha1_80, CryptoProvider};

const PACKET: usize = 1200;
const HEADER: usize = 12;
const SSRC: u32 = 0x1234_5678;

/// A 1200-byte RTP packet: a 12-byte header (VP8 payload type 96) and payload.
fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0xa5_u8; PACKET];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&90_000_u32.to_be_bytes());
    p[8..12].copy_from_slice(&SSRC.to_be_bytes());
    p
}

/// AES_CM keystream scratch that str0m's CTR path allocates past the tag.
const CTR_PADDING: usize = 15;

fn bench(c: &mut Criterion) {
    let provider: CryptoProvider = str0m::crypto::from_feature_flags();
    let srtp = provider.srtp_provider;
    let hmac_provider = provider.sha1_hmac_provider;
    let key = [0x11_u8; 16];
    let cm_salt = [0x22_u8; 14];
    let gcm_salt = [0x22_u8; 12];
    let hmac_key = [0x33_u8; 20];
    let input = packet(1000);

    let mut group = c.benchmark_group("srtp-protect-1200B");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));

    // --- str0m's per-packet path ---------------------------------------------
    let mut cm = srtp.aes_128_cm_sha1_80().create_cipher(key, true);
    let mut index: u64 = 70_000;
    group.bench_function("str0m/AES128_CM_SHA1_80", |b| {
        b.iter(|| {
            index += 1;
            let iv = Aes128CmSha1_80::rtp_iv(cm_salt, SSRC, index);
            let tag = Aes128CmSha1_80::HMAC_TAG_LEN;
            let mut out = vec![0_u8; input.len() + tag + CTR_PADDING.saturating_sub(tag)];
            // A failed encryption would make every figure meaningless.
            cm.encrypt(&iv, &input[HEADER..], &mut out[HEADER..])
                .expect("encrypt");
            out[..HEADER].copy_from_slice(&input[..HEADER]);
            let sha1_hmac = |k: &[u8], p: &[&[u8]]| hmac_provider.sha1_hmac(k, p);
            Aes128CmSha1_80::rtp_hmac(sha1_hmac, &hmac_key, &mut out, index, input.len());
            out.truncate(input.len() + tag);
            black_box(out)
        })
    });

    let mut gcm = srtp.aead_aes_128_gcm().create_cipher(key, true);
    let mut seq: u16 = 0;
    group.bench_function("str0m/AEAD_AES_128_GCM", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let iv = AeadAes128Gcm::rtp_iv(gcm_salt, SSRC, 1, seq);
            let mut out = vec![0_u8; input.len() + AeadAes128Gcm::TAG_LEN];
            gcm.encrypt(&iv, &input[..HEADER], &input[HEADER..], &mut out[HEADER..])
                .expect("encrypt");
            out[..HEADER].copy_from_slice(&input[..HEADER]);
            black_box(out)
        })
    });

    // --- the same with keys set up once, in place ------------------------------
    let ctr = EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &key).expect("key")).expect("ctr");
    let mac = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &hmac_key);
    let mut buf = vec![0_u8; PACKET + Aes128CmSha1_80::HMAC_TAG_LEN];
    let mut index: u64 = 70_000;
    group.bench_function("aws-lc-rs-keyed/AES128_CM_SHA1_80", |b| {
        b.iter(|| {
            index += 1;
            buf[..PACKET].copy_from_slice(&input);
            let iv = Aes128CmSha1_80::rtp_iv(cm_salt, SSRC, index);
            let iv = FixedLength::try_from(&iv[..]).expect("16-byte iv");
            ctr.less_safe_encrypt(&mut buf[HEADER..PACKET], EncryptionContext::Iv128(iv))
                .expect("encrypt");
            let mut ctx = hmac::Context::with_key(&mac);
            ctx.update(&buf[..PACKET]);
            ctx.update(&((index >> 16) as u32).to_be_bytes());
            let tag = ctx.sign();
            buf[PACKET..].copy_from_slice(&tag.as_ref()[..Aes128CmSha1_80::HMAC_TAG_LEN]);
            black_box(&buf);
        })
    });

    let sealing = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).expect("key"));
    let mut buf = vec![0_u8; PACKET + AeadAes128Gcm::TAG_LEN];
    let mut seq: u16 = 0;
    group.bench_function("aws-lc-rs-keyed/AEAD_AES_128_GCM", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            buf[..PACKET].copy_from_slice(&input);
            let iv = AeadAes128Gcm::rtp_iv(gcm_salt, SSRC, 1, seq);
            let nonce = Nonce::assume_unique_for_key(iv);
            let (head, body) = buf[..PACKET].split_at_mut(HEADER);
            let tag = sealing
                .seal_in_place_separate_tag(nonce, Aad::from(&*head), body)
                .expect("seal");
            buf[PACKET..].copy_from_slice(tag.as_ref());
            black_box(&buf);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
