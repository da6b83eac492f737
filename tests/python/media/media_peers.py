"""Real WebRTC peers (aiortc) that talk to onstage the way BEHAVIOUR §4 describes:
WHIP publish, subscribe, and the stage-events WebSocket.

Everything here is plain asyncio; tests drive it with `asyncio.run`. Peers record
what they see (connection states, decoded frames with their arrival times and mean
colour, decoded audio) so tests can assert on real media, not on signalling alone.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aioice.ice
import av
import jwt
import numpy as np
import requests
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

# --- loopback ICE ----------------------------------------------------------------------------------
_original_get_host_addresses = aioice.ice.get_host_addresses


def loopback_only_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice leaves 127.0.0.1 out of its host candidates; onstage listens on
    loopback in the tests, so offer exactly that (and nothing that leaves the machine)."""
    return ["127.0.0.1"] if use_ipv4 else []


def use_loopback_ice() -> None:
    aioice.ice.get_host_addresses = loopback_only_host_addresses


def restore_ice() -> None:
    aioice.ice.get_host_addresses = _original_get_host_addresses


def new_pc() -> RTCPeerConnection:
    # No ICE servers: aiortc would otherwise ask a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


# --- what publishers send ---------------------------------------------------------------------------
WIDTH, HEIGHT, FPS = 320, 240, 30


class ColourTrack(VideoStreamTrack):
    """320x240 @ 30 fps frames of one solid colour: the publisher's signature."""

    def __init__(self, rgb: tuple[int, int, int], width: int = WIDTH, height: int = HEIGHT):
        super().__init__()
        self.rgb = rgb
        rgb_img = np.empty((height, width, 3), np.uint8)
        rgb_img[:] = rgb
        self._yuv = av.VideoFrame.from_ndarray(rgb_img, format="rgb24").reformat(format="yuv420p").to_ndarray()
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        self.frames_sent += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A sine tone, 48 kHz mono, 20 ms frames: the publisher's audible signature."""

    kind = "audio"

    def __init__(self, freq: float, rate: int = 48000, ptime: float = 0.02, amplitude: float = 0.3):
        super().__init__()
        self.freq = freq
        self.rate = rate
        self.samples = int(rate * ptime)
        self.amplitude = amplitude
        self._start: float | None = None
        self._t = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._t += self.samples
            wait = self._start + self._t / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        n = np.arange(self._t, self._t + self.samples)
        pcm = (self.amplitude * 32767 * np.sin(2 * np.pi * self.freq * n / self.rate)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._t
        frame.time_base = fractions.Fraction(1, self.rate)
        return frame


def codecs_of(kind: str, mime: str) -> list:
    """The codec capabilities of `kind` restricted to `mime` (plus RTX for video)."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    wanted = [c for c in caps if c.mimeType.lower() == mime.lower()]
    assert wanted, f"aiortc offers no {mime}: {[c.mimeType for c in caps]}"
    if kind == "video":
        wanted += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return wanted


# --- what subscribers receive --------------------------------------------------------------------------
class VideoSink:
    """Consumes a received video track, recording each decoded frame."""

    def __init__(self, track: MediaStreamTrack):
        self.track = track
        self.arrivals: list[float] = []  # time.monotonic() of each decoded frame
        self.colours: list[tuple[float, np.ndarray]] = []  # (arrival, mean RGB) of sampled frames
        self.sizes: set[tuple[int, int]] = set()
        self.ended_at: float | None = None
        self.first_frame = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                now = time.monotonic()
                self.arrivals.append(now)
                self.sizes.add((frame.width, frame.height))
                if len(self.arrivals) % 3 == 1:
                    rgb = frame.to_ndarray(format="rgb24")
                    self.colours.append((now, rgb.reshape(-1, 3).mean(axis=0)))
                self.first_frame.set()
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self.ended_at = time.monotonic()

    @property
    def count(self) -> int:
        return len(self.arrivals)

    def frames_after(self, t: float) -> int:
        return sum(1 for a in self.arrivals if a > t)

    def mean_colour(self, since: float | None = None, last: int = 10) -> np.ndarray | None:
        cs = [c for (t, c) in self.colours if since is None or t > since]
        if not cs:
            return None
        return np.mean(cs[-last:], axis=0)

    async def wait_frames(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.count >= n


class AudioSink:
    """Consumes a received audio track, keeping the decoded samples of channel 0."""

    def __init__(self, track: MediaStreamTrack):
        self.track = track
        self.frames = 0
        self.rate = 48000
        self.chunks: list[np.ndarray] = []
        self.arrivals: list[float] = []
        self.ended_at: float | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                self.arrivals.append(time.monotonic())
                self.frames += 1
                self.rate = frame.sample_rate
                channels = len(frame.layout.channels)
                pcm = frame.to_ndarray()
                if frame.format.is_planar:
                    mono = pcm[0]
                else:
                    mono = pcm.reshape(-1)[::channels]
                self.chunks.append(mono.astype(np.float64))
                if len(self.chunks) > 200:
                    del self.chunks[:100]
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self.ended_at = time.monotonic()

    def dominant_frequency(self, seconds: float = 1.0) -> float | None:
        if not self.chunks:
            return None
        pcm = np.concatenate(self.chunks)[-int(self.rate * seconds):]
        if len(pcm) < self.rate // 10 or not np.any(pcm):
            return None
        window = np.hanning(len(pcm))
        spectrum = np.abs(np.fft.rfft(pcm * window))
        spectrum[0] = 0
        return float(np.argmax(spectrum) * self.rate / len(pcm))

    def rms(self, seconds: float = 0.5) -> float:
        if not self.chunks:
            return 0.0
        pcm = np.concatenate(self.chunks)[-int(self.rate * seconds):]
        return float(np.sqrt(np.mean(pcm ** 2)))


# --- HTTP ------------------------------------------------------------------------------------------------
async def http(method: str, url: str, **kw) -> requests.Response:
    kw.setdefault("timeout", 15)
    return await asyncio.to_thread(requests.request, method, url, **kw)


def describe(resp: requests.Response) -> str:
    req = resp.request
    return (f"{req.method} {req.url} -> {resp.status_code} "
            f"headers={dict(resp.headers)} body={resp.text[:500]!r}")


def sdp_codecs(sdp: str, kind: str) -> list[str]:
    """Codec names (rtpmap encoding names, in order) of the first m=<kind> section."""
    sections = re.split(r"\r?\n(?=m=)", sdp)
    for sec in sections:
        if sec.startswith(f"m={kind} "):
            pts = sec.split("\r\n", 1)[0].split("\n", 1)[0].split()[3:]
            names = {}
            for m in re.finditer(r"a=rtpmap:(\d+) ([^/\s]+)", sec):
                names[m.group(1)] = m.group(2)
            return [names.get(pt, pt) for pt in pts]
    return []


def sdp_fmtp(sdp: str, kind: str) -> dict[str, str]:
    out = {}
    for sec in re.split(r"\r?\n(?=m=)", sdp):
        if sec.startswith(f"m={kind} "):
            for m in re.finditer(r"a=fmtp:(\d+) ([^\r\n]+)", sec):
                out[m.group(1)] = m.group(2)
    return out


def first_media_codec(sdp: str, kind: str) -> str | None:
    """The first codec of m=<kind> that is not a repair format (rtx, red, ulpfec)."""
    for name in sdp_codecs(sdp, kind):
        if name.lower() not in ("rtx", "red", "ulpfec", "flexfec-03"):
            return name
    return None


# --- peers -------------------------------------------------------------------------------------------------
class Peer:
    """One RTCPeerConnection plus the WHIP resource it created."""

    def __init__(self, label: str):
        self.label = label
        self.pc = new_pc()
        self.states: list[tuple[float, str]] = []
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.location: str | None = None
        self.offer_sdp: str | None = None
        self.answer_sdp: str | None = None
        self.response: requests.Response | None = None
        self.post_started: float | None = None
        self.post_done: float | None = None

        @self.pc.on("connectionstatechange")
        def _on_state() -> None:
            s = self.pc.connectionState
            self.states.append((time.monotonic(), s))
            if s == "connected":
                self.connected.set()
            if s in ("closed", "failed"):
                self.ended.set()

    async def make_offer(self, munge=None) -> str:
        """Creates the offer and sets it locally; aiortc gathers every candidate here
        (no trickle). `munge(sdp) -> sdp` alters what will be sent."""
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        sdp = self.pc.localDescription.sdp
        self.offer_sdp = munge(sdp) if munge is not None else sdp
        return self.offer_sdp

    async def post_offer(self, url: str, token: str) -> requests.Response:
        """POSTs the offer made by make_offer; on 201 applies the answer."""
        self.post_started = time.monotonic()
        resp = await http("POST", url, data=self.offer_sdp.encode(),
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
        self.post_done = time.monotonic()
        self.response = resp
        if resp.status_code == 201:
            self.answer_sdp = resp.text
            loc = resp.headers.get("Location")
            self.location = urljoin(url, loc) if loc else None
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=resp.text, type="answer"))
        return resp

    async def _negotiate(self, url: str, token: str, munge=None) -> requests.Response:
        await self.make_offer(munge)
        return await self.post_offer(url, token)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.label}: not connected within {timeout}s; states {self.state_names()}") from None

    async def wait_ended(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def state_names(self) -> list[str]:
        return [s for _, s in self.states]

    async def delete(self) -> requests.Response | None:
        if self.location is None:
            return None
        resp = await http("DELETE", self.location)
        self.location = None
        return resp

    async def close(self) -> None:
        try:
            await self.delete()
        except requests.RequestException:
            pass
        await self.pc.close()


class Publisher(Peer):
    def __init__(self, label: str, colour=None, tone=None, video_codec: str | None = None,
                 audio_codec: str | None = None):
        super().__init__(label)
        self.video = ColourTrack(colour) if colour is not None else None
        self.audio = ToneTrack(tone) if tone is not None else None
        if self.video is not None:
            t = self.pc.addTransceiver(self.video, direction="sendonly")
            if video_codec:
                t.setCodecPreferences(codecs_of("video", video_codec))
        if self.audio is not None:
            t = self.pc.addTransceiver(self.audio, direction="sendonly")
            if audio_codec:
                t.setCodecPreferences(codecs_of("audio", audio_codec))

    async def publish(self, whip_url: str, token: str, munge=None) -> requests.Response:
        return await self._negotiate(whip_url, token, munge)

    async def close(self) -> None:
        await super().close()
        for t in (self.video, self.audio):
            if t is not None:
                t.stop()


class Subscriber(Peer):
    def __init__(self, label: str, audio: bool = True, video: bool = True):
        super().__init__(label)
        self.video: VideoSink | None = None
        self.audio: AudioSink | None = None
        self.got_track = asyncio.Event()
        if video:
            self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self.video = VideoSink(track)
            else:
                self.audio = AudioSink(track)
            self.got_track.set()

    async def subscribe(self, whip_url: str, publisher_id: str, token: str, munge=None) -> requests.Response:
        return await self._negotiate(f"{whip_url}/subscribe/{publisher_id}", token, munge)

    async def wait_video(self, n: int = 1, timeout: float = 10.0) -> VideoSink:
        deadline = time.monotonic() + timeout
        while self.video is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert self.video is not None, f"{self.label}: no video track after {timeout}s; states {self.state_names()}"
        ok = await self.video.wait_frames(n, max(0.1, deadline - time.monotonic()))
        assert ok, (f"{self.label}: {self.video.count} video frames decoded in {timeout}s, wanted {n}; "
                    f"states {self.state_names()}")
        return self.video

    async def wait_audio(self, n: int = 1, timeout: float = 10.0) -> AudioSink:
        deadline = time.monotonic() + timeout
        while self.audio is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert self.audio is not None, f"{self.label}: no audio track after {timeout}s; states {self.state_names()}"
        while self.audio.frames < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert self.audio.frames >= n, (f"{self.label}: {self.audio.frames} audio frames decoded in {timeout}s, "
                                        f"wanted {n}; states {self.state_names()}")
        return self.audio

    async def close(self) -> None:
        await super().close()
        for sink in (self.video, self.audio):
            if sink is not None:
                sink.task.cancel()
                try:
                    await sink.task
                except BaseException:
                    pass


class LossyVideoLink:
    """Drops every `every`-th video RTP packet a subscriber receives, before SRTP, as
    a lossy network would, and watches what arrives after SRTP: each dropped sequence
    number should come back as a retransmission (RTX carrying it as OSN, or the same
    packet again) once the subscriber NACKs it.

    Install after the subscriber's offer is made (its transports exist) and before
    the answer is applied; call `start(answer_sdp)` once the answer is known."""

    def __init__(self, sub: "Subscriber", every: int = 12):
        self.every = every
        self.active = False
        self.video_pt: int | None = None
        self.rtx_pt: int | None = None
        self.seen = 0
        self.dropped: list[int] = []
        self.retransmitted: set[int] = set()
        self.rtx_packets = 0
        dtls = sub.pc.getTransceivers()[0].receiver.transport
        ice = dtls.transport
        original_recv = ice._recv

        async def lossy_recv() -> bytes:
            while True:
                data = await original_recv()
                if (self.active and len(data) >= 12 and 128 <= data[0] < 192
                        and not (192 <= data[1] <= 208) and (data[1] & 0x7F) == self.video_pt):
                    self.seen += 1
                    if self.seen % self.every == 0:
                        self.dropped.append(int.from_bytes(data[2:4], "big"))
                        continue
                return data

        ice._recv = lossy_recv
        self._sub = sub

    def start(self, answer_sdp: str) -> None:
        self.video_pt, self.rtx_pt = _video_payload_types(answer_sdp)
        receiver = next(t.receiver for t in self._sub.pc.getTransceivers() if t.kind == "video")
        original = receiver._handle_rtp_packet

        async def observe(packet, arrival_time_ms):
            if packet.payload_type == self.rtx_pt and len(packet.payload) >= 2:
                self.rtx_packets += 1
                self.retransmitted.add(int.from_bytes(packet.payload[:2], "big"))
            elif packet.payload_type == self.video_pt and packet.sequence_number in self.dropped:
                self.retransmitted.add(packet.sequence_number)
            return await original(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = observe
        self.active = True

    def stop(self) -> None:
        self.active = False

    def unrecovered(self) -> list[int]:
        return [s for s in self.dropped if s not in self.retransmitted]


def _video_payload_types(sdp: str) -> tuple[int | None, int | None]:
    """(media PT, its RTX PT) of the first video codec of the m=video section."""
    for sec in re.split(r"\r?\n(?=m=)", sdp):
        if not sec.startswith("m=video "):
            continue
        names = {int(m.group(1)): m.group(2).lower() for m in re.finditer(r"a=rtpmap:(\d+) ([^/\s]+)", sec)}
        pts = [int(x) for x in sec.split("\n", 1)[0].split()[3:]]
        media = next((pt for pt in pts if names.get(pt) not in ("rtx", "red", "ulpfec")), None)
        rtx = None
        for m in re.finditer(r"a=fmtp:(\d+) apt=(\d+)", sec):
            if names.get(int(m.group(1))) == "rtx" and int(m.group(2)) == media:
                rtx = int(m.group(1))
        return media, rtx
    return None, None


def colour_distance(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


# --- stage events socket ------------------------------------------------------------------------------------
class EventsClient:
    """The stage-events WebSocket, token as subprotocol; keeps every message."""

    def __init__(self, label: str = "events"):
        self.label = label
        self.ws = None
        self.messages: list[tuple[float, dict]] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task | None = None
        self.closed_at: float | None = None

    async def connect(self, events_url: str, stage_id: str, token: str) -> "EventsClient":
        self.ws = await ws_connect(f"{events_url}/{stage_id}", subprotocols=[Subprotocol(token)],
                                   open_timeout=10, ping_interval=None)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                async with self._changed:
                    self.messages.append((time.monotonic(), msg))
                    self._changed.notify_all()
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass
        finally:
            self.closed_at = time.monotonic()
            async with self._changed:
                self._changed.notify_all()

    def states(self) -> list[dict]:
        return [m["payload"] for _, m in self.messages if m.get("type") == "STAGE_STATE"]

    async def wait_for(self, pred, timeout: float = 10.0, start: int = 0, what: str = "a message"):
        """The first message (index >= start) for which pred(msg) holds."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                for i in range(start, len(self.messages)):
                    if pred(self.messages[i][1]):
                        return self.messages[i][1]
                left = deadline - time.monotonic()
                if left <= 0 or self.closed_at is not None:
                    raise AssertionError(f"{self.label}: no {what} within {timeout}s; got "
                                         f"{[m for _, m in self.messages]}"
                                         + (" (socket closed)" if self.closed_at else ""))
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def wait_state(self, pred, timeout: float = 10.0, start: int = 0, what: str = "STAGE_STATE"):
        return (await self.wait_for(lambda m: m.get("type") == "STAGE_STATE" and pred(m["payload"]),
                                    timeout, start, what))["payload"]

    async def send(self, obj: dict) -> None:
        await self.ws.send(json.dumps(obj))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except BaseException:
                pass


async def events_refusal(events_url: str, stage_id: str, token: str) -> int | None:
    """Tries the events socket; returns the HTTP status of a refused handshake, or None
    when it was accepted (the socket is closed again)."""
    try:
        ws = await ws_connect(f"{events_url}/{stage_id}", subprotocols=[Subprotocol(token)],
                              open_timeout=10, ping_interval=None)
    except websockets.InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    return None


def participants_by_id(state: dict) -> dict[str, dict]:
    return {p["id"]: p for p in state.get("participants", [])}


# --- tokens ---------------------------------------------------------------------------------------------------
def self_signed_token(private_key, key_arn: str, stage: dict, *, jti: str, exp_in: float = 3600,
                      iat_offset: float = 0, capabilities=("PUBLISH", "SUBSCRIBE"), user_id: str | None = None,
                      overrides: dict | None = None) -> str:
    now = int(time.time())
    caps = {}
    if "PUBLISH" in capabilities:
        caps["allow_publish"] = True
    if "SUBSCRIBE" in capabilities:
        caps["allow_subscribe"] = True
    claims = {
        "exp": int(now + exp_in),
        "iat": int(now + iat_offset),
        "jti": jti,
        "resource": stage["arn"],
        "topic": stage["arn"].rsplit("/", 1)[1],
        "events_url": stage["endpoints"]["events"],
        "whip_url": stage["endpoints"]["whip"],
        "capabilities": caps,
        "version": "1.0",
    }
    if user_id is not None:
        claims["user_id"] = user_id
    claims.update(overrides or {})
    return jwt.encode(claims, private_key, algorithm="ES384", headers={"kid": key_arn})


def forge_signature(token: str) -> str:
    """The same header and claims with one signature byte altered."""
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


# --- boto3 look-ups -------------------------------------------------------------------------------------------
def participant_events(ivs, stage_arn: str, session_id: str, participant_id: str) -> list[dict]:
    out, token = [], None
    while True:
        kw = dict(stageArn=stage_arn, sessionId=session_id, participantId=participant_id)
        if token:
            kw["nextToken"] = token
        page = ivs.list_participant_events(**kw)
        out += page.get("events", [])
        token = page.get("nextToken")
        if not token:
            return out


def active_session(ivs, stage_arn: str) -> str | None:
    return ivs.get_stage(arn=stage_arn)["stage"].get("activeSessionId")


async def error_event(ivs, stage_arn: str, session_id: str, participant_id: str, name: str,
                      code: str, timeout: float = 5.0) -> dict:
    """Waits for the error event `name` with `code` of `participant_id`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            events = await asyncio.to_thread(participant_events, ivs, stage_arn, session_id, participant_id)
        except ivs.exceptions.ResourceNotFoundException as e:
            events = [f"ResourceNotFound: {e}"]
        hits = [e for e in events if isinstance(e, dict) and e["name"] == name and e.get("errorCode") == code]
        if hits:
            assert len(hits) == 1, f"more than one {name}/{code} for {participant_id}: {events}"
            return hits[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} with errorCode {code} for participant {participant_id} "
                                 f"in session {session_id}; ListParticipantEvents gave {events}")
        await asyncio.sleep(0.2)


async def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(pred)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class Cleanup:
    """Closes every peer and socket a test opened, whatever happens."""

    items: list = field(default_factory=list)

    def add(self, x):
        self.items.append(x)
        return x

    async def close(self) -> None:
        for x in reversed(self.items):
            try:
                await asyncio.wait_for(x.close(), 10)
            except BaseException:
                pass
        self.items.clear()
