"""Attacks on the HTTP port, as plain sockets: each opens its connections, sends
what the attack sends and keeps the sockets until closed."""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import contextmanager

from media_peers import Cleanup, Publisher, Subscriber, colour_distance, describe

MIB = 1024 * 1024
# The server's memory may grow by less than this under any attack.
RSS_GROWTH_LIMIT_KIB = 20 * 1024
# The colour the real publisher sends during an attack, and how many decoded frames
# of it the real subscriber must see.
MEDIA_COLOUR = (0, 160, 0)
MEDIA_FRAMES = 15


def rss_kib(pid: int) -> int:
    """The process's resident memory, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return s


@contextmanager
def held(sockets: list[socket.socket]):
    try:
        yield sockets
    finally:
        for s in sockets:
            try:
                s.close()
            except OSError:
                pass


def send_what_fits(s: socket.socket, data: bytes, within: float = 2.0) -> int:
    """Sends as much of `data` as the connection takes without blocking for long;
    returns the bytes sent (the server may close or stop reading)."""
    s.setblocking(False)
    sent, deadline = 0, time.monotonic() + within
    view = memoryview(data)
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += s.send(view[sent:sent + 256 * 1024])
        except BlockingIOError:
            time.sleep(0.001)
            if sent == 0 and time.monotonic() > deadline - within / 2:
                break
        except OSError:
            break
    return sent


class Health:
    """What the tests assert about the server during and after an attack."""

    def __init__(self, server):
        self.server = server
        self.client = server.client()
        self.peak_kib = server.baseline_rss_kib

    def sample(self) -> int:
        kib = rss_kib(self.server.proc.pid)
        self.peak_kib = max(self.peak_kib, kib)
        return kib

    def check(self) -> None:
        assert self.server.proc.poll() is None, f"the server died:\n{self.server.log()}"
        started = time.monotonic()
        self.client.list_stages()
        arn = self.client.create_stage(name="during-attack")["stage"]["arn"]
        self.client.delete_stage(arn=arn)
        self.last_call_seconds = time.monotonic() - started
        self.sample()

    def check_media(self) -> float:
        """A real aiortc publisher and subscriber on a fresh stage: the subscriber
        must decode the publisher's colour. Returns the seconds the whole round
        trip took (stage, tokens, publish, subscribe, frames, teardown)."""
        started = time.monotonic()
        media_round_trip(self.server, self.client)
        self.last_media_seconds = time.monotonic() - started
        self.sample()
        return self.last_media_seconds

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.server.baseline_rss_kib

    def assert_memory(self) -> None:
        assert self.growth_kib < RSS_GROWTH_LIMIT_KIB, (
            f"RSS grew by {self.growth_kib} KiB (from {self.server.baseline_rss_kib} KiB)")

    def report(self, name: str, **figures) -> None:
        extra = " ".join(f"{k}={v}" for k, v in figures.items())
        print(f"\n[{name}] baseline_rss_kib={self.server.baseline_rss_kib} peak_rss_kib={self.peak_kib} "
              f"growth_kib={self.growth_kib} signed_calls_ok=yes {extra}")


def media_round_trip(server, client, timeout: float = 45.0) -> None:
    """Publishes a coloured test pattern with aiortc on a new stage, subscribes to it
    with a second aiortc peer, waits for decoded frames of that colour, and deletes
    the stage. Raises if any step fails."""
    stage = client.create_stage(name="media-check")["stage"]
    whip = stage["endpoints"]["whip"]

    def token(user: str, caps: list[str]) -> dict:
        return client.create_participant_token(stageArn=stage["arn"], userId=user,
                                               capabilities=caps)["participantToken"]

    pub_token, sub_token = token("publisher", ["PUBLISH"]), token("subscriber", ["SUBSCRIBE"])

    async def go() -> None:
        c = Cleanup()
        try:
            pub = c.add(Publisher("publisher during an attack", colour=MEDIA_COLOUR, tone=440.0))
            resp = await pub.publish(whip, pub_token["token"])
            assert resp.status_code == 201, describe(resp)
            await pub.wait_connected()
            sub = c.add(Subscriber("subscriber during an attack"))
            resp = await sub.subscribe(whip, pub_token["participantId"], sub_token["token"])
            assert resp.status_code == 201, describe(resp)
            sink = await sub.wait_video(MEDIA_FRAMES, timeout=20)
            colour = sink.mean_colour()
            assert colour is not None and colour_distance(colour, MEDIA_COLOUR) < 40, colour
        finally:
            await c.close()

    try:
        asyncio.run(asyncio.wait_for(go(), timeout))
    finally:
        client.delete_stage(arn=stage["arn"])
