"""Helpers of the participant-replication suite: boto3 calls run off the event loop
(so aiortc keeps sending and decoding while the API answers), the records and events
BEHAVIOUR §6 describes, and what a destination viewer sees.

A *viewer* is what a client of the destination stage does: it holds the destination's
events socket, waits until STAGE_STATE shows the replica publishing, and subscribes
to it at the destination's `{whip}/subscribe/{participantId}`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from botocore.exceptions import ClientError

from helpers import STATUS, assert_seven_headers
from media_peers import (
    Cleanup,
    EventsClient,
    Publisher,
    Subscriber,
    colour_distance,
    describe,
    participant_events,
    participants_by_id,
)

RED, BLUE, GREEN, YELLOW = (210, 40, 40), (40, 60, 210), (40, 190, 60), (220, 200, 40)
COLOUR_TOLERANCE = 30  # per channel, after encode -> SFU -> decode
TONE_TOLERANCE_HZ = 15
# Between what a source-stage subscriber and a destination subscriber decode of the
# same publisher at the same moment (both get the same RTP; only timing differs).
SAME_CONTENT_TOLERANCE = 12

# The seven header members of Start/StopParticipantReplication's output (botocore
# parses them from the response headers), with the values of BEHAVIOUR §1.
HEADER_MEMBERS = {
    "accessControlAllowOrigin": "*",
    "cacheControl": "no-store, no-cache",
    "contentSecurityPolicy": "default-src 'self'; upgrade-insecure-requests;",
    "strictTransportSecurity": "max-age:47304000; includeSubDomains",
    "xContentTypeOptions": "nosniff",
    "xFrameOptions": "DENY",
}


def stage_id(stage_or_arn) -> str:
    arn = stage_or_arn["arn"] if isinstance(stage_or_arn, dict) else stage_or_arn
    return arn.rsplit("/", 1)[1]


async def api(fn, **kw):
    """A boto3 call in a worker thread."""
    return await asyncio.to_thread(fn, **kw)


def assert_header_members(resp: dict, op: str) -> None:
    """Start/StopParticipantReplication: `200 {}` whose only output is the seven headers."""
    meta = resp["ResponseMetadata"]
    assert meta["HTTPStatusCode"] == 200, f"{op}: {meta}"
    for k, v in HEADER_MEMBERS.items():
        assert resp.get(k) == v, f"{op}: output member {k} = {resp.get(k)!r}, want {v!r}; output {resp}"
    assert resp.get("accessControlExposeHeaders"), f"{op}: no accessControlExposeHeaders in {resp}"
    assert_seven_headers(meta["HTTPHeaders"])


async def refused(fn, code: str, *mentions: str, any_of=(), **kw) -> str:
    """Calls `fn(**kw)`, which must fail with `code` (HTTP status per BEHAVIOUR §1, the
    message naming every one of `mentions` and at least one of `any_of`, the seven
    headers). Returns the message."""
    op = getattr(fn, "__name__", str(fn))
    try:
        out = await asyncio.to_thread(fn, **kw)
    except ClientError as e:
        err = e.response
        got = (err["Error"].get("Code"), err["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, STATUS[code]), (
            f"{op}({kw}) answered {got[1]} {got[0]}: {err['Error'].get('Message')!r}; expected {STATUS[code]} {code}")
        msg = err["Error"].get("Message", "")
        assert msg, f"{op}({kw}): {code} with an empty message: {err}"
        for m in mentions:
            assert m in msg, f"{op}({kw}): the {code} message does not name {m!r}: {msg!r}"
        if any_of:
            assert any(m in msg for m in any_of), f"{op}({kw}): the {code} message names none of {any_of}: {msg!r}"
        assert_seven_headers(err["ResponseMetadata"]["HTTPHeaders"])
        return msg
    raise AssertionError(f"{op}({kw}) succeeded ({out}); expected {STATUS[code]} {code}")


# --- records --------------------------------------------------------------------------------------------
def all_replicas(ivs, src_arn: str, pid: str, max_results: int | None = None) -> list[dict]:
    """Every ListParticipantReplicas entry, following nextToken."""
    out, token, pages = [], None, 0
    while True:
        kw = dict(sourceStageArn=src_arn, participantId=pid)
        if max_results is not None:
            kw["maxResults"] = max_results
        if token:
            kw["nextToken"] = token
        page = ivs.list_participant_replicas(**kw)
        out += page["replicas"]
        token = page.get("nextToken")
        pages += 1
        assert pages < 100, f"ListParticipantReplicas does not stop paginating: {out}"
        if not token:
            return out


def replicas_to(ivs, src_arn: str, pid: str, dst_arn: str) -> list[dict]:
    return [r for r in all_replicas(ivs, src_arn, pid) if r["destinationStageArn"] == dst_arn]


async def replica_state(ivs, src_arn: str, pid: str, dst_arn: str) -> list[str]:
    return [r["replicationState"] for r in await asyncio.to_thread(replicas_to, ivs, src_arn, pid, dst_arn)]


async def wait_stopped(ivs, src_arn: str, pid: str, dst_arn: str, timeout: float) -> float:
    """Polls ListParticipantReplicas until the replication src -> dst of pid is STOPPED
    (no ACTIVE record left for that destination); returns when it was seen so."""
    deadline = time.monotonic() + timeout
    while True:
        recs = await asyncio.to_thread(replicas_to, ivs, src_arn, pid, dst_arn)
        if recs and all(r["replicationState"] == "STOPPED" for r in recs):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"the replication of {pid} from {src_arn} to {dst_arn} is not STOPPED "
                                 f"{timeout}s later: ListParticipantReplicas gives {recs}")
        await asyncio.sleep(0.1)


def active_session(ivs, arn: str) -> str | None:
    return ivs.get_stage(arn=arn)["stage"].get("activeSessionId")


async def wait_session_ended(ivs, arn: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sid = await asyncio.to_thread(active_session, ivs, arn)
        if sid is None:
            return
        if time.monotonic() > deadline:
            parts = await asyncio.to_thread(ivs.list_participants, stageArn=arn, sessionId=sid)
            raise AssertionError(f"{what}: stage {arn} still has active session {sid} {timeout}s later; "
                                 f"its participants: {parts['participants']}")
        await asyncio.sleep(0.1)


async def events_of(ivs, arn: str, sid: str, pid: str) -> list[dict]:
    return await asyncio.to_thread(participant_events, ivs, arn, sid, pid)


async def wait_event(ivs, arn: str, sid: str, pid: str, pred, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        evs = await events_of(ivs, arn, sid, pid)
        hits = [e for e in evs if pred(e)]
        if hits:
            return hits[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} for {pid} in {arn} session {sid} within {timeout}s; "
                                 f"ListParticipantEvents gives {evs}")
        await asyncio.sleep(0.1)


def names(events: list[dict]) -> list[str]:
    return [e["name"] for e in events]


# --- media --------------------------------------------------------------------------------------------------
async def publish(c: Cleanup, stage: dict, token: dict, label: str, colour=None, tone=None,
                  codec: str = "video/VP8") -> Publisher:
    p = c.add(Publisher(label, colour=colour, tone=tone, video_codec=codec if colour is not None else None))
    r = await p.publish(stage["endpoints"]["whip"], token["token"])
    assert r.status_code == 201, describe(r)
    await p.wait_connected()
    return p


async def drop_without_goodbye(p: Publisher) -> None:
    """Closes the publisher's peer connection without the WHIP DELETE (the server
    sees the DTLS close and ICE stop, never the HTTP goodbye)."""
    p.location = None
    await p.pc.close()
    for t in (p.video, p.audio):
        if t is not None:
            t.stop()


def assert_video_colour(sub: Subscriber, colour, since: float | None = None, last: int = 10,
                        what: str = "") -> np.ndarray:
    mean = sub.video.mean_colour(since=since, last=last)
    assert mean is not None, f"{sub.label}: no decoded frame sampled{what}"
    assert colour_distance(mean, colour) <= COLOUR_TOLERANCE, (
        f"{sub.label}: decoded mean colour {mean.round(1).tolist()} is not the publisher's {colour}{what}")
    return mean


def assert_tone(sub: Subscriber, tone: float, what: str = "") -> None:
    f = sub.audio.dominant_frequency()
    assert f is not None and abs(f - tone) <= TONE_TOLERANCE_HZ, (
        f"{sub.label}: decoded audio peaks at {f} Hz, the publisher plays {tone} Hz "
        f"(rms {sub.audio.rms():.0f}){what}")


async def wait_colour(sub: Subscriber, colour, since: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.video is not None:
            mean = sub.video.mean_colour(since=since, last=5)
            if mean is not None and colour_distance(mean, colour) <= COLOUR_TOLERANCE:
                return
        await asyncio.sleep(0.1)
    mean = sub.video.mean_colour(since=since, last=5) if sub.video else None
    raise AssertionError(
        f"{sub.label}: {timeout}s on, decodes {None if mean is None else mean.round(1).tolist()} "
        f"({sub.video.frames_after(since) if sub.video else 0} frames since), not {colour}; "
        f"states {sub.state_names()}")


async def wait_tone(sub: Subscriber, tone: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.audio is not None:
            f = sub.audio.dominant_frequency(0.5)
            if f is not None and abs(f - tone) <= TONE_TOLERANCE_HZ:
                return
        await asyncio.sleep(0.1)
    assert_tone(sub, tone, f" ({timeout}s on)")


def sub_ended_at(sub: Subscriber) -> float | None:
    """When the subscriber's media ended: its video track ended or its connection closed."""
    times = []
    if sub.video is not None and sub.video.ended_at is not None:
        times.append(sub.video.ended_at)
    times += [t for t, s in sub.states if s in ("closed", "failed")]
    return min(times) if times else None


async def assert_media_ended(sub: Subscriber, t0: float, within: float = 2.0, what: str = "") -> None:
    """After t0 (when the replication was stopped), the subscriber's track ends (or its
    connection closes) within `within` s, and no frame is decoded later than that."""
    await asyncio.sleep(max(0.0, t0 + within + 1.0 - time.monotonic()))
    late = sub.video.frames_after(t0 + within) if sub.video else 0
    last = (sub.video.arrivals[-1] - t0) if sub.video and sub.video.arrivals else None
    assert late == 0, (f"{sub.label}{what}: {late} frames decoded more than {within}s after the stop "
                       f"(last at {last:+.3f}s); states {sub.state_names()}")
    ended = sub_ended_at(sub)
    assert ended is not None and ended - t0 <= within, (
        f"{sub.label}{what}: the subscription's media "
        + ("has not ended" if ended is None else f"ended only {ended - t0:.3f}s")
        + f" after the stop (its track ends or its connection closes); states {sub.state_names()}")


@dataclass
class Viewer:
    """A destination-stage client: events socket + one subscription to the replica."""

    stage: dict
    token: dict
    events: EventsClient
    sub: Subscriber | None = None
    mark: int = 0  # index into events.messages from which a test looks for changes

    @classmethod
    async def open(cls, c: Cleanup, stage: dict, token: dict, label: str) -> "Viewer":
        ev = c.add(EventsClient(f"{label} events"))
        await ev.connect(stage["endpoints"]["events"], stage_id(stage), token["token"])
        await ev.wait_state(lambda st: token["participantId"] in participants_by_id(st), 5,
                            what=f"{label} itself in STAGE_STATE")
        return cls(stage, token, ev)

    async def wait_publishing(self, pid: str, timeout: float = 5.0, start: int = 0) -> dict:
        st = await self.events.wait_state(
            lambda st: participants_by_id(st).get(pid, {}).get("isPublishing") is True, timeout, start=start,
            what=f"STAGE_STATE of {stage_id(self.stage)} with {pid} publishing")
        return participants_by_id(st)[pid]

    async def watch(self, c: Cleanup, pid: str, timeout: float = 5.0, start: int = 0, frames: int = 15) -> Subscriber:
        """Waits for `pid` publishing in STAGE_STATE, subscribes, and decodes `frames`."""
        await self.wait_publishing(pid, timeout, start)
        self.sub = c.add(Subscriber(f"subscriber of {pid} in {stage_id(self.stage)}"))
        r = await self.sub.subscribe(self.stage["endpoints"]["whip"], pid, self.token["token"])
        assert r.status_code == 201, describe(r)
        await self.sub.wait_connected()
        if frames:
            await self.sub.wait_video(frames, timeout=8)
        return self.sub

    async def wait_gone(self, pid: str, start: int, timeout: float = 3.0) -> None:
        await self.events.wait_state(lambda st: pid not in participants_by_id(st), timeout, start=start,
                                     what=f"STAGE_STATE of {stage_id(self.stage)} without {pid}")

    async def leave(self) -> None:
        if self.sub is not None:
            await self.sub.close()
        await self.events.close()


async def expect_stopped(ivs, *, src: dict, dst: dict, pid: str, src_session: str, dst_session: str,
                         t0: float, viewer: Viewer | None, mark: int = 0, within: float = 2.0,
                         source_deleted: bool = False, destination_deleted: bool = False,
                         source_still_replicating: bool = False, viewer_leaves: bool = True) -> None:
    """Everything BEHAVIOUR §6 says a stopped replication looks like, after a stop that
    happened at t0 (monotonic): STOPPED in ListParticipantReplicas (or no record when
    the source stage is gone), REPLICATION_STOPPED on the source participant, the
    replica DISCONNECTED with PUBLISH_STOPPED and LEFT in the destination and gone from
    its STAGE_STATE, the viewer's media ended, and the destination session ending once
    the viewer leaves too (the replica holds nothing open)."""
    where = f" (replication of {pid} from {stage_id(src)} to {stage_id(dst)})"
    if source_deleted:
        recs = await asyncio.to_thread(all_replicas, ivs, src["arn"], pid)
        assert recs == [], f"the source stage was deleted, its replication records must go: {recs}"
    else:
        await wait_stopped(ivs, src["arn"], pid, dst["arn"], max(0.5, t0 + within - time.monotonic()))
        recs = await asyncio.to_thread(replicas_to, ivs, src["arn"], pid, dst["arn"])
        last = recs[-1] if len(recs) == 1 else next(r for r in recs if r["destinationSessionId"] == dst_session)
        assert last == {"sourceStageArn": src["arn"], "participantId": pid, "sourceSessionId": src_session,
                        "destinationStageArn": dst["arn"], "destinationSessionId": dst_session,
                        "replicationState": "STOPPED"}, f"the stopped replica record{where}: {last}"
        stopped = await wait_event(ivs, src["arn"], src_session, pid,
                                   lambda e: e["name"] == "REPLICATION_STOPPED"
                                   and e.get("destinationStageArn") == dst["arn"], 2.0,
                                   f"REPLICATION_STOPPED naming {dst['arn']}")
        assert stopped.get("destinationSessionId") == dst_session, f"REPLICATION_STOPPED{where}: {stopped}"
        assert not stopped.get("replica"), f"the source's event is not a replica's: {stopped}"
        part = (await api(ivs.get_participant, stageArn=src["arn"], sessionId=src_session,
                          participantId=pid))["participant"]
        want = "ACTIVE" if source_still_replicating else "STOPPED"
        assert (part.get("replicationType"), part.get("replicationState")) == ("SOURCE", want), (
            f"the source participant after the stop{where}: {part}")

    if not destination_deleted:
        part = (await api(ivs.get_participant, stageArn=dst["arn"], sessionId=dst_session,
                          participantId=pid))["participant"]
        assert part["state"] == "DISCONNECTED", f"the replica after the stop{where}: {part}"
        assert part.get("replicationType") == "REPLICA" and part.get("replicationState") == "STOPPED", (
            f"the replica after the stop{where}: {part}")
        assert part["published"] is True, part
        evs = await wait_event(ivs, dst["arn"], dst_session, pid, lambda e: e["name"] == "LEFT", 2.0, "LEFT")
        evs = await events_of(ivs, dst["arn"], dst_session, pid)
        assert names(evs)[:2] == ["LEFT", "PUBLISH_STOPPED"], f"the replica's events in the destination{where}: {evs}"
        assert all(e.get("replica") is True for e in evs), f"replica events without replica: true{where}: {evs}"
        if viewer is not None:
            await viewer.wait_gone(pid, mark, 3.0)

    if viewer is not None and viewer.sub is not None:
        await assert_media_ended(viewer.sub, t0, within, where)
        if viewer_leaves and not destination_deleted:
            await viewer.leave()
    if not destination_deleted and (viewer is None or viewer_leaves):
        await wait_session_ended(ivs, dst["arn"], 5.0,
                                 f"nobody is left in the destination after the stop{where}")


def set_colour(track, rgb) -> None:
    """Repaints a media_peers.ColourTrack from the next frame on."""
    import av

    h, w = track._yuv.shape[0] * 2 // 3, track._yuv.shape[1]
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    track._yuv = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p").to_ndarray()
    track.rgb = rgb
