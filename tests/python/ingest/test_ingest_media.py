"""RTMP(S) ingest end to end (BEHAVIOUR §10): Debian's ffmpeg pushes a solid colour
and a 440 Hz tone; the ingest participant joins its stage and an aiortc subscriber
decodes both through onstage; the record says RTMP/RTMPS with the configuration;
a cut stream records its error code."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encoder import push, push_args  # noqa: E402


@pytest.fixture(autouse=True)
def peers_on_loopback(loopback_ice):
    yield


def media():
    import media_peers
    return media_peers


RED = np.array([255.0, 0.0, 0.0])


def make_config(ingest, protocol: str) -> tuple[dict, dict]:
    stage = ingest.client.create_stage(name=f"ingest-{protocol.lower()}")["stage"]
    config = ingest.client.create_ingest_configuration(
        name="encoder", stageArn=stage["arn"], ingestProtocol=protocol, userId="obs-host",
        attributes={"room": "studio"}, insecureIngest=protocol == "RTMP")["ingestConfiguration"]
    return stage, config


def start_encoder(ffmpeg, url: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(push_args(ffmpeg, url, seconds=seconds, colour="red"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


async def wait_publishing(ivs, stage_arn: str, participant_id: str, timeout: float = 15.0) -> str:
    """The session in which `participant_id` publishes, once it does."""
    m = media()

    def published():
        session = m.active_session(ivs, stage_arn)
        if session is None:
            return None
        p = ivs.get_participant(stageArn=stage_arn, sessionId=session,
                                participantId=participant_id)["participant"]
        return session if p["state"] == "CONNECTED" and p["published"] else None

    return await m.wait_until(published, timeout, what=f"{participant_id} publishing")


@pytest.mark.parametrize("protocol", ["RTMP", "RTMPS"])
def test_an_encoder_reaches_an_aiortc_subscriber(ingest, ffmpeg, arun, protocol):
    ivs = ingest.client
    stage, config = make_config(ingest, protocol)
    url = (ingest.url if protocol == "RTMP" else ingest.secure_url)(config["streamKey"])
    pid = config["participantId"]
    encoder = start_encoder(ffmpeg, url, seconds=30)
    m = media()

    async def run():
        cleanup = m.Cleanup()
        try:
            session = await wait_publishing(ivs, stage["arn"], pid)
            p = ivs.get_participant(stageArn=stage["arn"], sessionId=session,
                                    participantId=pid)["participant"]
            assert p["protocol"] == protocol
            assert p["ingestConfigurationArn"] == config["arn"]
            assert p["userId"] == "obs-host"
            assert p["attributes"] == {"room": "studio"}
            got = ivs.get_ingest_configuration(arn=config["arn"])["ingestConfiguration"]
            assert got["state"] == "ACTIVE"
            listed = ivs.list_ingest_configurations(filterByState="ACTIVE")["ingestConfigurations"]
            assert config["arn"] in [c["arn"] for c in listed]

            token = ivs.create_participant_token(stageArn=stage["arn"], capabilities=["SUBSCRIBE"])
            sub = cleanup.add(m.Subscriber("viewer"))
            resp = await sub.subscribe(stage["endpoints"]["whip"], pid,
                                       token["participantToken"]["token"])
            assert resp.status_code == 201, m.describe(resp)
            assert m.first_media_codec(sub.answer_sdp, "video") == "H264"
            await sub.wait_connected()
            video = await sub.wait_video(30, timeout=15)
            colour = video.mean_colour()
            assert m.colour_distance(colour, RED) < 60, f"decoded colour {colour}"
            audio = await sub.wait_audio(100, timeout=10)
            freq = audio.dominant_frequency(1.0)
            assert freq is not None and abs(freq - 440) < 15, f"dominant frequency {freq}"
            return session
        finally:
            await cleanup.close()

    try:
        session = arun(run(), timeout=60)
    finally:
        stop(encoder)

    def ended():
        c = ivs.get_ingest_configuration(arn=config["arn"])["ingestConfiguration"]
        return c["state"] == "INACTIVE"

    arun(m.wait_until(ended, 10, what="the configuration INACTIVE"))
    # ListParticipantEvents answers newest first.
    names = [e["name"] for e in reversed(m.participant_events(ivs, stage["arn"], session, pid))]
    assert names[:2] == ["JOINED", "PUBLISH_STARTED"], names
    assert names[-2:] == ["PUBLISH_STOPPED", "LEFT"], names


def test_b_frames_are_recorded_as_a_publish_error(ingest, ffmpeg, arun):
    ivs = ingest.client
    stage, config = make_config(ingest, "RTMP")
    pid = config["participantId"]
    # A subscriber-free stage still records the stream: B-frames come after a
    # first keyframe, so the participant has joined by then.
    p = push(ffmpeg, ingest.url(config["streamKey"]), seconds=10, bframes=2, profile="main")
    assert p.returncode != 0, "a stream with B-frames must be cut"
    m = media()
    sessions = ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]
    assert sessions, "the stream joined its stage"
    session = sessions[0]["sessionId"]
    arun(m.error_event(ivs, stage["arn"], session, pid, "PUBLISH_ERROR", "B_FRAME_PRESENT",
                       timeout=10))
    # ListParticipantEvents answers newest first.
    names = [e["name"] for e in reversed(m.participant_events(ivs, stage["arn"], session, pid))]
    assert names == ["JOINED", "PUBLISH_STARTED", "PUBLISH_ERROR", "PUBLISH_STOPPED", "LEFT"], names


def test_disconnect_participant_cuts_the_encoder(ingest, ffmpeg, arun):
    ivs = ingest.client
    stage, config = make_config(ingest, "RTMP")
    pid = config["participantId"]
    encoder = start_encoder(ffmpeg, ingest.url(config["streamKey"]), seconds=30)
    try:
        arun(wait_publishing(ivs, stage["arn"], pid))
        started = time.monotonic()
        ivs.disconnect_participant(stageArn=stage["arn"], participantId=pid, reason="off air")
        encoder.wait(timeout=10)
        assert time.monotonic() - started < 10
        assert encoder.returncode != 0, "ffmpeg saw its connection cut"
    finally:
        stop(encoder)
    got = ivs.get_ingest_configuration(arn=config["arn"])["ingestConfiguration"]
    assert got["stageArn"] == ""
    m = media()
    arun(m.wait_until(lambda: ivs.get_ingest_configuration(arn=config["arn"])
                      ["ingestConfiguration"]["state"] == "INACTIVE", 10, what="INACTIVE"))


def test_the_ingest_participant_is_replicated_and_recorded(ingest, ffmpeg, arun):
    """Replication and recording follow the source (BEHAVIOUR §6, §9): the ingest
    participant is replicated into a second stage, where aiortc decodes it, and its
    stage's automatic recording writes what Debian's ffmpeg decodes."""
    ivs = ingest.client
    bucket = "ingest-rec"
    storage = ivs.create_storage_configuration(name="ingest-rec", s3={"bucketName": bucket})
    stage = ivs.create_stage(name="ingest-recorded", autoParticipantRecordingConfiguration={
        "storageConfigurationArn": storage["storageConfiguration"]["arn"],
        "hlsConfiguration": {"targetSegmentDurationSeconds": 2}})["stage"]
    other = ivs.create_stage(name="ingest-replica")["stage"]
    config = ivs.create_ingest_configuration(stageArn=stage["arn"], ingestProtocol="RTMP",
                                             insecureIngest=True)["ingestConfiguration"]
    pid = config["participantId"]
    encoder = start_encoder(ffmpeg, ingest.url(config["streamKey"]), seconds=30)
    m = media()

    async def run():
        cleanup = m.Cleanup()
        try:
            await wait_publishing(ivs, stage["arn"], pid)
            ivs.start_participant_replication(sourceStageArn=stage["arn"],
                                              destinationStageArn=other["arn"], participantId=pid)
            token = ivs.create_participant_token(stageArn=other["arn"], capabilities=["SUBSCRIBE"])
            sub = cleanup.add(m.Subscriber("replica viewer"))
            resp = await sub.subscribe(other["endpoints"]["whip"], pid,
                                       token["participantToken"]["token"])
            assert resp.status_code == 201, m.describe(resp)
            await sub.wait_connected()
            video = await sub.wait_video(30, timeout=15)
            assert m.colour_distance(video.mean_colour(), RED) < 60
            audio = await sub.wait_audio(50, timeout=10)
            freq = audio.dominant_frequency(1.0)
            assert freq is not None and abs(freq - 440) < 15, freq
            # Ten seconds recorded (the recording's length, not a wait for a timeout).
            await asyncio.sleep(8)
        finally:
            await cleanup.close()

    try:
        arun(run(), timeout=60)
    finally:
        stop(encoder)

    def recorded():
        for s in ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]:
            p = ivs.get_participant(stageArn=stage["arn"], sessionId=s["sessionId"],
                                    participantId=pid)["participant"]
            if p.get("recordingState") == "STOPPED":
                return p
        return None

    p = arun(m.wait_until(recorded, 30, what="the recording STOPPED"))
    hls = ingest.server.data_dir / "buckets" / bucket / p["recordingS3Prefix"] / "media/hls"
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(hls / "multivariant.m3u8"), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=120)
    assert dec.returncode == 0 and dec.stderr.strip() == "", dec.stderr[-2000:]
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
                            "-of", "json", str(hls / "high/playlist.m3u8")],
                           capture_output=True, text=True, timeout=60)
    import json
    streams = json.loads(probe.stdout)["streams"]
    assert {s["codec_name"] for s in streams} == {"h264", "opus"}, probe.stdout
    assert any((s.get("width"), s.get("height")) == (640, 360) for s in streams), probe.stdout


def test_refusals_after_the_key_named_its_configuration_are_recorded(ingest, ffmpeg, arun):
    """REUSE_OF_STREAM_KEY and INVALID_PROTOCOL become PUBLISH_ERROR events of the
    configuration's participant while its stage has a running session."""
    ivs = ingest.client
    stage, config = make_config(ingest, "RTMPS")
    pid = config["participantId"]
    encoder = start_encoder(ffmpeg, ingest.secure_url(config["streamKey"]), seconds=30)
    m = media()
    try:
        session = arun(wait_publishing(ivs, stage["arn"], pid))
        again = push(ffmpeg, ingest.secure_url(config["streamKey"]), seconds=1, realtime=False)
        assert again.returncode != 0, "a second stream with a live key was accepted"
        arun(m.error_event(ivs, stage["arn"], session, pid, "PUBLISH_ERROR", "REUSE_OF_STREAM_KEY"))
        plain = push(ffmpeg, ingest.url(config["streamKey"]), seconds=1, realtime=False)
        assert plain.returncode != 0, "plain RTMP to an RTMPS configuration was accepted"
        arun(m.error_event(ivs, stage["arn"], session, pid, "PUBLISH_ERROR", "INVALID_PROTOCOL"))
        assert encoder.poll() is None, "the live stream went on"
    finally:
        stop(encoder)


def test_delete_stage_cuts_the_encoder(ingest, ffmpeg, arun):
    ivs = ingest.client
    stage, config = make_config(ingest, "RTMP")
    encoder = start_encoder(ffmpeg, ingest.url(config["streamKey"]), seconds=30)
    try:
        arun(wait_publishing(ivs, stage["arn"], config["participantId"]))
        ivs.delete_stage(arn=stage["arn"])
        encoder.wait(timeout=10)
        assert encoder.returncode != 0, "ffmpeg saw its connection cut"
    finally:
        stop(encoder)
    got = ivs.get_ingest_configuration(arn=config["arn"])["ingestConfiguration"]
    assert got["stageArn"] == ""
    m = media()
    arun(m.wait_until(lambda: ivs.get_ingest_configuration(arn=config["arn"])
                      ["ingestConfiguration"]["state"] == "INACTIVE", 10, what="INACTIVE"))


def test_more_than_720p_is_recorded_as_a_publish_error(ingest, ffmpeg, arun):
    ivs = ingest.client
    stage, config = make_config(ingest, "RTMP")
    pid = config["participantId"]
    p = push(ffmpeg, ingest.url(config["streamKey"]), seconds=5, size="1920x1080", realtime=False)
    assert p.returncode != 0, "a 1080p stream must be cut"
    m = media()
    sessions = ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]
    assert sessions, "the encoder's participant joined its stage"
    session = sessions[0]["sessionId"]
    arun(m.error_event(ivs, stage["arn"], session, pid, "PUBLISH_ERROR", "RESOLUTION_EXCEEDED",
                       timeout=10))
    names = [e["name"] for e in reversed(m.participant_events(ivs, stage["arn"], session, pid))]
    assert names[-2:] == ["PUBLISH_STOPPED", "LEFT"], names


def test_more_than_8_5_mbps_is_recorded_as_a_publish_error(ingest, ffmpeg, arun):
    ivs = ingest.client
    stage, config = make_config(ingest, "RTMP")
    pid = config["participantId"]
    p = push(ffmpeg, ingest.url(config["streamKey"]), seconds=6, noisy=True, realtime=False)
    assert p.returncode != 0, "a stream over 8.5 Mbps must be cut"
    m = media()
    sessions = ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]
    assert sessions, "the encoder's participant joined its stage"
    session = sessions[0]["sessionId"]
    arun(m.error_event(ivs, stage["arn"], session, pid, "PUBLISH_ERROR", "BITRATE_EXCEEDED",
                       timeout=10))
    names = [e["name"] for e in reversed(m.participant_events(ivs, stage["arn"], session, pid))]
    assert names[-2:] == ["PUBLISH_STOPPED", "LEFT"], names
