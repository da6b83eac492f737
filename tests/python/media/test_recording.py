"""Individual participant recording (BEHAVIOUR §9) with real parts: boto3 configures,
an aiortc publisher publishes, onstage records into a bucket (a directory under its
data dir by default, or an S3-protocol server process), and Debian's ffmpeg decodes
what it wrote.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from media_peers import Publisher

_n = itertools.count()

PREFIX = re.compile(r"^(?P<stage>[A-Za-z0-9]+)/(?P<session>st-[A-Za-z0-9]+|[A-Za-z0-9-]+)/"
                    r"(?P<participant>[A-Za-z0-9]+)/\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$")



def recording_stage(ivs, bucket: str, **recording) -> dict:
    storage = ivs.create_storage_configuration(name=f"rec-{next(_n)}", s3={"bucketName": bucket})
    cfg = {"storageConfigurationArn": storage["storageConfiguration"]["arn"],
           "hlsConfiguration": {"targetSegmentDurationSeconds": 2}}
    cfg.update(recording)
    return ivs.create_stage(name=f"rec-{next(_n)}", autoParticipantRecordingConfiguration=cfg)["stage"]


async def publish_for(stage: dict, token: str, seconds: float, codec: str = "H264",
                      colour=(220, 40, 40)) -> Publisher:
    pub = Publisher(f"recorded {codec}", colour=colour, tone=440.0, video_codec=f"video/{codec}")
    resp = await pub.publish(stage["endpoints"]["whip"], token)
    assert resp.status_code == 201, resp.text
    await pub.wait_connected(10)
    await asyncio.sleep(seconds)  # the length of the recording, not a wait for a timeout
    await pub.delete()
    await pub.close()
    return pub


def wait_recording_state(ivs, stage: dict, pid: str, want: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        sessions = ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]
        for s in sessions:
            try:
                p = ivs.get_participant(stageArn=stage["arn"], sessionId=s["sessionId"],
                                        participantId=pid)["participant"]
            except ivs.exceptions.ResourceNotFoundException:
                continue
            last = p
            if p.get("recordingState") == want:
                return p
        time.sleep(0.2)
    raise AssertionError(f"participant never reached recordingState {want}: {last}")


def ffprobe_duration(playlist: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "default=nw=1:nk=1", str(playlist)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip())


def check_recording(root: Path, stage: dict, participant: dict, seconds: float,
                    video_codec: str = "h264") -> dict:
    """Every object and JSON field of one recording under `root` (its prefix); returns
    the end document."""
    prefix = participant["recordingS3Prefix"]
    m = PREFIX.match(prefix)
    assert m, prefix
    assert m["stage"] == stage["arn"].split("/")[-1]
    assert m["participant"] == participant["participantId"]
    base = root / prefix
    started = json.loads((base / "events/recording-started.json").read_text())
    ended = json.loads((base / "events/recording-ended.json").read_text())
    for doc, status in ((started, "RECORDING_STARTED"), (ended, "RECORDING_ENDED")):
        assert doc["version"] == "v1"
        assert doc["stage_arn"] == stage["arn"]
        assert doc["session_id"] == m["session"]
        assert doc["participant_id"] == participant["participantId"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["recording_started_at"])
        assert doc["recording_status"] == status
        assert doc["recording_status_message"] == ""
        hls = doc["media"]["hls"]
        assert hls["path"] == "media/hls" and hls["playlist"] == "multivariant.m3u8"
        assert hls["renditions"][0]["path"] == "high"
        assert hls["renditions"][0]["playlist"] == "playlist.m3u8"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ended["recording_ended_at"])
    assert ended["recording_ended_at"] >= ended["recording_started_at"]
    rendition = ended["media"]["hls"]["renditions"][0]
    assert (rendition["resolution_width"], rendition["resolution_height"]) == (320, 240)

    hls_dir = base / "media/hls"
    multivariant = (hls_dir / "multivariant.m3u8").read_text()
    assert "high/playlist.m3u8" in multivariant and "RESOLUTION=320x240" in multivariant
    playlist = (hls_dir / "high/playlist.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    assert '#EXT-X-MAP:URI="init.mp4"' in playlist
    segments = re.findall(r"^(\d+)\.m4s$", playlist, re.M)
    assert segments == [str(i) for i in range(1, len(segments) + 1)]
    assert len(segments) >= int(seconds / 2) - 2
    for s in segments:
        assert (hls_dir / "high" / f"{s}.m4s").stat().st_size > 0
    assert (hls_dir / "high/init.mp4").stat().st_size > 0

    # Debian's ffmpeg decodes every frame without an error...
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(hls_dir / "multivariant.m3u8"),
                          "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert dec.returncode == 0 and dec.stderr.strip() == "", dec.stderr[-2000:]
    # ...the streams are the ones published...
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
                            "-of", "json", str(hls_dir / "high/playlist.m3u8")],
                           capture_output=True, text=True, timeout=60)
    codecs = {s["codec_name"] for s in json.loads(probe.stdout)["streams"]}
    assert codecs == {video_codec, "opus"}, probe.stdout
    # ...and lasts what the end file says, within half a second.
    duration = ffprobe_duration(hls_dir / "high/playlist.m3u8")
    assert abs(duration - ended["media"]["hls"]["duration_ms"] / 1000) < 0.5, (duration, ended)
    assert abs(duration - seconds) < 3.0, duration
    return ended


def test_h264_publisher_recorded_under_the_data_dir(server, ivs, token_for, arun):
    """The acceptance path on the default storage: a directory per bucket under the data dir."""
    bucket = f"rec-local-{next(_n)}"
    stage = recording_stage(ivs, bucket)
    tok = token_for(stage, "recorded")
    arun(publish_for(stage, tok["token"], 12.0), timeout=60)
    p = wait_recording_state(ivs, stage, tok["participantId"], "STOPPED")
    assert p["recordingS3BucketName"] == bucket
    check_recording(server.data_dir / "buckets" / bucket, stage, p, 12.0)
    # ListParticipants shows the state too.
    sessions = ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]
    listed = ivs.list_participants(stageArn=stage["arn"], sessionId=sessions[0]["sessionId"],
                                   filterByRecordingState="STOPPED")["participants"]
    assert [x["participantId"] for x in listed] == [tok["participantId"]]


def test_stage_without_recording_records_nothing(server, ivs, token_for, arun):
    stage = ivs.create_stage(name=f"norec-{next(_n)}")["stage"]
    tok = token_for(stage, "not-recorded")
    arun(publish_for(stage, tok["token"], 1.0), timeout=30)
    sessions = ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]
    p = ivs.get_participant(stageArn=stage["arn"], sessionId=sessions[0]["sessionId"],
                            participantId=tok["participantId"])["participant"]
    assert p["recordingState"] == "DISABLED"
    assert "recordingS3Prefix" not in p


class S3Server:
    """moto's S3-protocol server, a process of its own on a free port."""

    def __init__(self, root: Path):
        import socket
        import sys
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        exe = Path(sys.executable).parent / "moto_server"
        if not exe.exists():
            pytest.fail("moto_server is missing: install tests/python/requirements-media.txt")
        self.log = open(root / f"moto-{self.port}.log", "wb")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        import boto3
        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                                   aws_access_key_id="test", aws_secret_access_key="test")
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.1)

    def download(self, bucket: str, into: Path) -> None:
        """Every object of the bucket, as files under `into`."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                dest = into / o["Key"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(bucket, o["Key"], str(dest))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path)
    yield server
    server.stop()


S3_CONFIG = """
[s3]
endpoint = "{url}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
path_style = true
"""


def test_recorded_into_an_s3_server(s3, server_factory, token_for, arun, tmp_path):
    """The acceptance path on an S3-protocol server process: boto3 configures, aiortc
    publishes H.264, the S3 server holds the layout, ffmpeg decodes it all."""
    srv = server_factory(config_text=S3_CONFIG.format(url=s3.url))
    ivs = srv.client()
    bucket = "rec-s3"
    s3.client.create_bucket(Bucket=bucket)
    stage = recording_stage(ivs, bucket)
    tok = token_for(stage, "recorded-s3", client=ivs)
    arun(publish_for(stage, tok["token"], 20.0), timeout=90)
    p = wait_recording_state(ivs, stage, tok["participantId"], "STOPPED")
    assert p["recordingS3BucketName"] == bucket
    local = tmp_path / "downloaded"
    s3.download(bucket, local)
    keys = sorted(str(f.relative_to(local)) for f in local.rglob("*") if f.is_file())
    prefix = p["recordingS3Prefix"]
    assert all(k.startswith(prefix + "/") for k in keys), keys
    assert f"{prefix}/events/recording-started.json" in keys
    assert not (server_dir := srv.data_dir / "buckets").exists() or not any(server_dir.iterdir())
    check_recording(local, stage, p, 20.0)


def test_vp8_publisher_recorded_as_vp8(server, ivs, token_for, arun):
    bucket = f"rec-vp8-{next(_n)}"
    stage = recording_stage(ivs, bucket)
    tok = token_for(stage, "recorded-vp8")
    arun(publish_for(stage, tok["token"], 8.0, codec="VP8"), timeout=60)
    p = wait_recording_state(ivs, stage, tok["participantId"], "STOPPED")
    check_recording(server.data_dir / "buckets" / bucket, stage, p, 8.0, video_codec="vp8")


def test_unreachable_store_fails_the_recording_not_the_stage(server_factory, token_for, arun):
    """A store that refuses every upload: the participant's recording is FAILED, its
    publish worked."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    srv = server_factory(config_text=S3_CONFIG.format(url=f"http://127.0.0.1:{dead}"))
    ivs = srv.client()
    stage = recording_stage(ivs, "nowhere")
    tok = token_for(stage, "unrecordable", client=ivs)
    arun(publish_for(stage, tok["token"], 2.0), timeout=60)
    p = wait_recording_state(ivs, stage, tok["participantId"], "FAILED", timeout=60)
    assert p["published"] is True
    assert p["recordingS3BucketName"] == "nowhere"


def test_back_within_the_window_continues_the_prefix_and_a_restart_fails_it(server_factory, token_for, arun):
    """A publisher back within recordingReconnectWindowSeconds records into the same
    prefix (the window's end, and a new prefix after it, are tested in virtual time in
    crates/onstage-stage/tests/recording.rs). A restart of onstage mid-recording leaves
    the recording FAILED and what was uploaded playable."""
    srv = server_factory()
    ivs = srv.client()
    bucket = "rec-window"
    stage = recording_stage(ivs, bucket, recordingReconnectWindowSeconds=300,
                            **thumbnail_config(["SEQUENTIAL"], 1))
    tok = token_for(stage, "comes-back", client=ivs)
    arun(publish_for(stage, tok["token"], 5.0), timeout=60)
    first = wait_recording_state(ivs, stage, tok["participantId"], "ACTIVE")

    async def back():
        pub = Publisher("back", colour=(40, 40, 220), tone=660.0, video_codec="video/H264")
        resp = await pub.publish(stage["endpoints"]["whip"], tok["token"])
        assert resp.status_code == 201, resp.text
        await pub.wait_connected(10)
        await asyncio.sleep(5.0)
        return pub

    loop = asyncio.new_event_loop()
    try:
        pub = loop.run_until_complete(asyncio.wait_for(back(), 60))
        sessions = ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]
        latest = ivs.get_participant(stageArn=stage["arn"], sessionId=sessions[0]["sessionId"],
                                     participantId=tok["participantId"])["participant"]
        assert latest["recordingS3Prefix"] == first["recordingS3Prefix"]
        assert latest["recordingState"] == "ACTIVE"
        srv.restart()
        loop.run_until_complete(pub.close())
    finally:
        loop.close()

    for s in ivs.list_stage_sessions(stageArn=stage["arn"])["stageSessions"]:
        p = ivs.get_participant(stageArn=stage["arn"], sessionId=s["sessionId"],
                                participantId=tok["participantId"])["participant"]
        assert p["recordingState"] == "FAILED", p
    base = srv.data_dir / "buckets" / bucket / first["recordingS3Prefix"]
    failed_file = base / "events/recording-failed.json"
    deadline = time.monotonic() + 30
    while not failed_file.exists():
        assert time.monotonic() < deadline, "no recording-failed.json after the restart"
        time.sleep(0.1)
    failed = json.loads(failed_file.read_text())
    assert failed["recording_status"] == "RECORDING_ENDED_WITH_FAILURE"
    assert failed["recording_status_message"] != ""
    assert failed["participant_id"] == tok["participantId"]
    assert failed["recording_ended_at"] >= failed["recording_started_at"]
    hls = base / "media/hls"
    playlist = (hls / "high/playlist.m3u8").read_text()
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    segments = re.findall(r"^(\d+)\.m4s$", playlist, re.M)
    assert len(segments) >= 3, playlist
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(hls / "multivariant.m3u8"), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=120)
    assert dec.returncode == 0 and dec.stderr.strip() == "", dec.stderr[-2000:]
    # Both publishers' media are in it, one after the other, as far as it was stored.
    duration = ffprobe_duration(hls / "high/playlist.m3u8")
    assert duration > 6.0, duration
    assert abs(duration - failed["media"]["hls"]["duration_ms"] / 1000) < 0.5, (duration, failed)
    # The thumbnails' numbering carried on into the second publish (about five a publish).
    numbered = sorted(int(f.stem) for f in (base / "media/thumbnails/high").glob("*.jpg"))
    assert numbered == list(range(len(numbered))) and len(numbered) >= 8, numbered
    for n in numbered:
        assert jpeg_size(base / f"media/thumbnails/high/{n}.jpg") == (320, 240)


LOADTEST = Path(os.environ.get("ONSTAGE_LOADTEST_BIN",
                               Path(__file__).resolve().parents[3] / "target/debug/onstage-loadtest"))


@pytest.fixture(scope="module")
def h264_file(tmp_path_factory) -> Path:
    """Ten seconds of a 720p30 test pattern as Debian's ffmpeg encodes it with x264:
    Constrained Baseline, no B-frames, an IDR every 2 s, 2.5 Mbit/s, Annex B."""
    path = tmp_path_factory.mktemp("media") / "testsrc2-720p30.h264"
    enc = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=1280x720:r=30",
                          "-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "baseline",
                          "-bf", "0", "-g", "60", "-b:v", "2500k", "-f", "h264", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert enc.returncode == 0, enc.stderr
    return path


def test_ten_publishers_recorded_at_once(server_factory, h264_file, tmp_path):
    """The acceptance at full rate: the load tool publishes ten real 720p30 H.264 streams
    (a file's access units, looped) with Opus-sized audio onto a stage that records every
    publisher, and ten subscriber peers watch all ten. The subscribers lose < 1% of the
    packets; every recording decodes without a message from ffmpeg and lasts what its
    publisher published (within 1 s) and what its end file says; the taps dropped nothing."""
    if not LOADTEST.exists():
        pytest.fail(f"{LOADTEST} is missing: cargo build -p onstage-loadtest (or set ONSTAGE_LOADTEST_BIN)")
    srv = server_factory()
    bucket = "rec-ten"
    report_path = tmp_path / "load.json"
    run = subprocess.run(
        [str(LOADTEST), "media", "--endpoint", srv.url, "--server-pid", str(srv.proc.pid),
         "--publishers", "10", "--subscribers", "1", "--duration", "12s", "--settle", "2s",
         "--video-file", str(h264_file), "--record-bucket", bucket, "--json", str(report_path)],
        capture_output=True, text=True, timeout=120)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    report = json.loads(report_path.read_text())
    measured = report["measured"]
    print(f"ten recorded 720p30 publishers, ten subscribers each watching all: "
          f"{measured['rx_packets_per_second']:.0f} packets/s received, loss {measured['loss_percent']:.3f}%"
          f" of packets, {measured['frame_loss_percent']:.3f}% of frames, server CPU "
          f"{measured['server_cpu_percent_avg']}%")
    assert measured["subscribers_connected"] == 10 and measured["publishers_connected"] == 10
    assert measured["loss_percent"] < 1.0, measured
    assert report["failures"] == {}, report["failures"]

    metrics = __import__("requests").get(f"{srv.url}/metrics", timeout=5).text
    shed = [l for l in metrics.splitlines() if l.startswith("onstage_media_tap_packets_shed_total")]
    assert all(float(l.split()[-1]) == 0 for l in shed), shed

    root = srv.data_dir / "buckets" / bucket
    published = {p["publisher_id"]: p["seconds"] for p in report["publishers"]}
    assert len(published) == 10
    deadline = time.monotonic() + 60
    while len(list(root.glob("*/*/*/*/events/recording-ended.json"))) < 10:
        assert time.monotonic() < deadline, sorted(str(p) for p in root.glob("*/*/*/*/events/*"))
        time.sleep(0.2)
    durations = {}
    for ended_file in root.glob("*/*/*/*/events/recording-ended.json"):
        base = ended_file.parent.parent
        participant = base.parent.name
        ended = json.loads(ended_file.read_text())
        assert ended["recording_status"] == "RECORDING_ENDED"
        rendition = ended["media"]["hls"]["renditions"][0]
        assert (rendition["resolution_width"], rendition["resolution_height"]) == (1280, 720)
        hls = base / "media/hls"
        dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(hls / "multivariant.m3u8"), "-f", "null", "-"],
                             capture_output=True, text=True, timeout=120)
        assert dec.returncode == 0 and dec.stderr.strip() == "", dec.stderr[-2000:]
        duration = ffprobe_duration(hls / "high/playlist.m3u8")
        assert abs(duration - ended["media"]["hls"]["duration_ms"] / 1000) < 0.5, (duration, ended)
        durations[participant] = (round(duration, 2), round(published[participant], 2))
    print(f"recording vs publish durations (s): {sorted(durations.values())}")
    assert set(durations) == set(published)
    for recorded, sent in durations.values():
        assert abs(recorded - sent) < 1.0, durations


# Thumbnails (BEHAVIOUR §9): a keyframe at each interval mark, decoded and written as JPEG.

def thumbnail_config(storage: list[str], interval: int = 2, mode: str = "INTERVAL") -> dict:
    return {"thumbnailConfiguration": {"recordingMode": mode, "storage": storage,
                                       "targetIntervalSeconds": interval}}


def jpeg_size(path: Path) -> tuple[int, int]:
    """ffprobe (Debian's ffmpeg) reads the file as a JPEG picture: its size."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
                          "-of", "json", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    stream = json.loads(out.stdout)["streams"][0]
    assert stream["codec_name"] == "mjpeg", stream
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    return stream["width"], stream["height"]


def recorded_prefix(server, ivs, stage: dict, tok: dict, bucket: str) -> tuple[dict, Path]:
    p = wait_recording_state(ivs, stage, tok["participantId"], "STOPPED")
    return p, server.data_dir / "buckets" / bucket / p["recordingS3Prefix"]


def test_sequential_and_latest_thumbnails(server, ivs, token_for, arun):
    """H.264 for 12 s, a thumbnail every 2 s: numbered ones from 0 and the latest one,
    each a JPEG of the published size, named in the event files."""
    bucket = f"rec-thumbs-{next(_n)}"
    stage = recording_stage(ivs, bucket, **thumbnail_config(["SEQUENTIAL", "LATEST"], 2))
    tok = token_for(stage, "thumbed")
    arun(publish_for(stage, tok["token"], 12.0), timeout=60)
    p, base = recorded_prefix(server, ivs, stage, tok, bucket)
    ended = check_recording(server.data_dir / "buckets" / bucket, stage, p, 12.0)
    numbered = sorted(int(f.stem) for f in (base / "media/thumbnails/high").glob("*.jpg"))
    assert numbered == list(range(len(numbered))), numbered
    assert len(numbered) >= 4, numbered
    for n in numbered:
        assert jpeg_size(base / f"media/thumbnails/high/{n}.jpg") == (320, 240)
    assert jpeg_size(base / "media/latest_thumbnail/high/thumb.jpg") == (320, 240)
    assert sorted(f.name for f in (base / "media").iterdir()) == ["hls", "latest_thumbnail", "thumbnails"]
    thumbs = ended["media"]["thumbnails"]
    assert thumbs["path"] == "media/thumbnails"
    assert thumbs["renditions"] == [{"path": "high", "resolution_width": 320, "resolution_height": 240}]
    latest = ended["media"]["latest_thumbnail"]
    assert latest["path"] == "media/latest_thumbnail"
    assert latest["renditions"][0]["path"] == "high" and latest["renditions"][0]["file"] == "thumb.jpg"
    started = json.loads((base / "events/recording-started.json").read_text())
    assert started["media"]["thumbnails"]["path"] == "media/thumbnails"


def test_vp8_latest_thumbnail_only(server, ivs, token_for, arun):
    bucket = f"rec-thumbs-vp8-{next(_n)}"
    stage = recording_stage(ivs, bucket, **thumbnail_config(["LATEST"], 1))
    tok = token_for(stage, "thumbed-vp8")
    arun(publish_for(stage, tok["token"], 6.0, codec="VP8"), timeout=60)
    p, base = recorded_prefix(server, ivs, stage, tok, bucket)
    assert jpeg_size(base / "media/latest_thumbnail/high/thumb.jpg") == (320, 240)
    assert not (base / "media/thumbnails").exists()
    ended = json.loads((base / "events/recording-ended.json").read_text())
    assert "thumbnails" not in ended["media"] and "latest_thumbnail" in ended["media"]


def test_thumbnails_disabled_writes_none(server, ivs, token_for, arun):
    bucket = f"rec-nothumbs-{next(_n)}"
    stage = recording_stage(ivs, bucket, **thumbnail_config(["SEQUENTIAL", "LATEST"], 1, "DISABLED"))
    tok = token_for(stage, "unthumbed")
    arun(publish_for(stage, tok["token"], 4.0), timeout=60)
    p, base = recorded_prefix(server, ivs, stage, tok, bucket)
    assert sorted(f.name for f in (base / "media").iterdir()) == ["hls"]
    ended = json.loads((base / "events/recording-ended.json").read_text())
    assert set(ended["media"]) == {"hls"}


def test_media_types_none_writes_thumbnails_only(server, ivs, token_for, arun):
    """mediaTypes NONE: no HLS at all, the thumbnails and the event files."""
    bucket = f"rec-thumbsonly-{next(_n)}"
    stage = recording_stage(ivs, bucket, mediaTypes=["NONE"],
                            **thumbnail_config(["SEQUENTIAL"], 2))
    tok = token_for(stage, "thumbs-only")
    arun(publish_for(stage, tok["token"], 8.0), timeout=60)
    p, base = recorded_prefix(server, ivs, stage, tok, bucket)
    assert sorted(f.name for f in (base / "media").iterdir()) == ["thumbnails"]
    numbered = sorted(int(f.stem) for f in (base / "media/thumbnails/high").glob("*.jpg"))
    assert numbered == list(range(len(numbered))) and len(numbered) >= 3, numbered
    for n in numbered:
        assert jpeg_size(base / f"media/thumbnails/high/{n}.jpg") == (320, 240)
    ended = json.loads((base / "events/recording-ended.json").read_text())
    assert ended["recording_status"] == "RECORDING_ENDED"
    assert set(ended["media"]) == {"thumbnails"}


def test_audio_only_records_audio_and_thumbnails_of_the_video(server, ivs, token_for, arun):
    """mediaTypes AUDIO_ONLY (BEHAVIOUR §9.4, §9.8): the HLS holds the Opus track only,
    decodes whole and lasts what was published; the thumbnails still come from the
    publisher's video, at its size."""
    bucket = f"rec-audio-only-{next(_n)}"
    stage = recording_stage(ivs, bucket, mediaTypes=["AUDIO_ONLY"],
                            **thumbnail_config(["SEQUENTIAL", "LATEST"], 2))
    tok = token_for(stage, "audio-only")
    arun(publish_for(stage, tok["token"], 8.0), timeout=60)
    p, base = recorded_prefix(server, ivs, stage, tok, bucket)
    assert sorted(f.name for f in (base / "media").iterdir()) == ["hls", "latest_thumbnail", "thumbnails"]
    hls = base / "media/hls"
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                            "-of", "json", str(hls / "high/playlist.m3u8")],
                           capture_output=True, text=True, timeout=60)
    assert [s["codec_name"] for s in json.loads(probe.stdout)["streams"]] == ["opus"], probe.stdout
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(hls / "multivariant.m3u8"), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=120)
    assert dec.returncode == 0 and dec.stderr.strip() == "", dec.stderr[-2000:]
    ended = json.loads((base / "events/recording-ended.json").read_text())
    assert ended["recording_status"] == "RECORDING_ENDED"
    duration = ffprobe_duration(hls / "high/playlist.m3u8")
    assert abs(duration - ended["media"]["hls"]["duration_ms"] / 1000) < 0.5, (duration, ended)
    assert abs(duration - 8.0) < 3.0, duration
    multivariant = (hls / "multivariant.m3u8").read_text()
    assert "opus" in multivariant and "RESOLUTION" not in multivariant, multivariant
    assert "resolution_width" not in ended["media"]["hls"]["renditions"][0], ended
    numbered = sorted(int(f.stem) for f in (base / "media/thumbnails/high").glob("*.jpg"))
    assert numbered == list(range(len(numbered))) and len(numbered) >= 3, numbered
    for n in numbered:
        assert jpeg_size(base / f"media/thumbnails/high/{n}.jpg") == (320, 240)
    assert jpeg_size(base / "media/latest_thumbnail/high/thumb.jpg") == (320, 240)
    assert ended["media"]["thumbnails"]["renditions"][0]["resolution_width"] == 320
