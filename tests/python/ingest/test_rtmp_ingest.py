"""RTMP ingest with a real encoder (Debian's ffmpeg) against `onstage serve
--rtmp-port` (BEHAVIOUR §10.5–§10.6): what is accepted and what is refused.

These tests cover the RTMP server, the stream key and the limits; media reaching
subscribers and the ingest participant's record are test_ingest_media.py's."""

import subprocess
import time

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encoder import push, push_args  # noqa: E402


def test_stages_advertise_the_rtmp_endpoint(ingest):
    stage = ingest.client.create_stage(name="rtmp-endpoint")["stage"]
    assert stage["endpoints"]["rtmp"] == f"rtmp://127.0.0.1:{ingest.rtmp_port}/app/"
    assert stage["endpoints"]["rtmps"] == f"rtmps://127.0.0.1:{ingest.rtmps_port}/app/"


def test_rtmps_with_the_development_certificate(ingest, ffmpeg):
    c = config(ingest, insecure=False, protocol="RTMPS")
    p = push(ffmpeg, ingest.secure_url(c["streamKey"]), seconds=2)
    assert p.returncode == 0, p.stderr
    # The certificate and its private key were made in the data directory.
    key = ingest.server.data_dir / "rtmps-dev-key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert (ingest.server.data_dir / "rtmps-dev-cert.pem").exists()
    # A wrong key over TLS is refused as over plain RTMP.
    assert push(ffmpeg, ingest.secure_url(c["streamKey"] + "x"), seconds=2).returncode != 0


def test_plain_rtmp_to_the_rtmps_port_is_closed_at_once(ingest):
    import socket
    # An RTMP C0+C1 is not a TLS ClientHello: the server answers at most an alert
    # and closes, without waiting for the handshake deadline.
    with socket.create_connection(("127.0.0.1", ingest.rtmps_port), timeout=5) as s:
        s.sendall(b"\x03" + b"\x00" * 1536)
        s.settimeout(3)
        received = b""
        try:
            while chunk := s.recv(4096):
                received += chunk
                assert len(received) < 64, "more than a TLS alert"
        except ConnectionResetError:
            pass


def config(ingest, *, insecure=True, protocol="RTMP", with_stage=True):
    kw = {}
    if with_stage:
        kw["stageArn"] = ingest.client.create_stage(name="rtmp")["stage"]["arn"]
    return ingest.client.create_ingest_configuration(
        ingestProtocol=protocol, insecureIngest=insecure, **kw)["ingestConfiguration"]


def test_a_stream_with_a_valid_key_is_accepted(ingest, ffmpeg):
    c = config(ingest)
    p = push(ffmpeg, ingest.url(c["streamKey"]), seconds=2)
    assert p.returncode == 0, p.stderr


def test_a_wrong_key_is_refused(ingest, ffmpeg):
    c = config(ingest)
    for key in (c["streamKey"] + "x", "rt_000000000000_us-east-1_nosuchid_secret", "live_key"):
        started = time.monotonic()
        p = push(ffmpeg, ingest.url(key), seconds=5)
        assert p.returncode != 0, key
        assert time.monotonic() - started < 5, "refused at publish, not after streaming"


def test_plain_rtmp_is_refused_unless_insecure_ingest(ingest, ffmpeg):
    secure_only = config(ingest, insecure=False, protocol="RTMPS")
    assert push(ffmpeg, ingest.url(secure_only["streamKey"]), seconds=2).returncode != 0
    default = config(ingest, insecure=False)
    assert push(ffmpeg, ingest.url(default["streamKey"]), seconds=2).returncode != 0


def test_a_configuration_without_a_stage_is_refused(ingest, ffmpeg):
    c = config(ingest, with_stage=False)
    assert push(ffmpeg, ingest.url(c["streamKey"]), seconds=2).returncode != 0


def test_b_frames_cut_the_stream(ingest, ffmpeg):
    c = config(ingest)
    started = time.monotonic()
    p = push(ffmpeg, ingest.url(c["streamKey"]), seconds=10, bframes=2, profile="main")
    assert p.returncode != 0, "a stream with B-frames must be cut"
    assert time.monotonic() - started < 8, "cut at the first B-frame, not at the end"


def test_more_than_720p_is_refused(ingest, ffmpeg):
    c = config(ingest)
    p = push(ffmpeg, ingest.url(c["streamKey"]), seconds=5, size="1920x1080", realtime=False)
    assert p.returncode != 0


def test_the_same_key_twice_at_once_is_refused(ingest, ffmpeg):
    c = config(ingest)
    accepted_before = ingest.server.log().count("RTMP stream accepted")
    first = subprocess.Popen(push_args(ffmpeg, ingest.url(c["streamKey"]), seconds=8),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The second publish goes once the server has accepted the first stream
        # (its log says so), so the two never race for the key.
        deadline = time.monotonic() + 15
        while (ingest.server.log().count("RTMP stream accepted") == accepted_before
               and first.poll() is None and time.monotonic() < deadline):
            time.sleep(0.05)
        assert first.poll() is None, f"the first stream ended early: {first.stderr.read()}"
        second = push(ffmpeg, ingest.url(c["streamKey"]), seconds=1, realtime=False)
        assert second.returncode != 0, "a second stream with the same key was accepted"
        assert first.wait(timeout=30) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # Once the first stream ended, the key works again.
    assert push(ffmpeg, ingest.url(c["streamKey"]), seconds=1, realtime=False).returncode == 0
