"""Spoofed ICE connectivity checks on the media port (issue 12).

Every peer shares one UDP port; the receive loop routes a STUN check by the ufrag
in its USERNAME and everything else by source address. A viewer holds valid ICE
credentials of its own (its subscribe's answer), so it can sign checks that its
peer accepts — from any address it can send from. This test plays such viewers
(a subscribe on each shard) beside honest ones, on servers with two shards and
with one:

1. they send their own, validly signed checks from the publisher's exact address
   and port: the publisher's route must not move to an attacker's shard (before,
   the publisher's video stopped for every viewer on the other shard);
2. they send 300,000 such checks from as many different 127.x.y.z addresses: the
   address map must not grow (before, RSS grew by 11 MiB for good).

What an attacker does to its own subscribe is not checked: it may well lose it.

A second socket cannot bind the publisher's address and port (aioice does not
set SO_REUSEPORT on its sockets, and binding a port another socket holds without
it is refused), so the spoofed checks leave through the publisher's own socket:
to the server they are the same bytes from the same address.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import pytest
from aioice import stun

from media_peers import Cleanup, Publisher, Subscriber

RED = (210, 40, 40)
FLOOD = 300_000
# How long each attacker spoofs checks from the publisher's address.
SPOOF_WINDOW = 2.0
# Sends FLOOD datagrams (the given ones in turn), each from a different 127.x.y.z address: one
# socket, the source address of each datagram chosen with IP_PKTINFO (8 on Linux;
# any loopback address is local, so no privilege is needed).
FLOOD_SCRIPT = r"""
import socket, struct, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
checks = [bytes.fromhex(h) for h in sys.argv[3:]]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
for i in range(count):
    n = i + 0x020000
    src = bytes((127, (n >> 16) & 255, (n >> 8) & 255, n & 255))
    s.sendmsg([checks[i % len(checks)]], [(socket.IPPROTO_IP, 8, struct.pack("I4s4s", 0, src, bytes(4)))], 0,
               ("127.0.0.1", port))
"""
# How long a viewer may take to show video again after the flood.
RECOVERY_SECONDS = 45.0


def sdp_attr(sdp: str, name: str) -> str:
    m = re.search(rf"^a={name}:(\S+)", sdp, re.M)
    assert m, f"no a={name} in the SDP"
    return m.group(1)


def signed_check(viewer: Subscriber) -> bytes:
    """A binding request with the viewer's own ICE credentials, as its ICE agent
    would send it: USERNAME server:client, signed with the server's password."""
    server_ufrag = sdp_attr(viewer.answer_sdp, "ice-ufrag")
    server_pwd = sdp_attr(viewer.answer_sdp, "ice-pwd")
    client_ufrag = sdp_attr(viewer.offer_sdp, "ice-ufrag")
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{server_ufrag}:{client_ufrag}"
    msg.attributes["PRIORITY"] = 1862270975
    msg.attributes["ICE-CONTROLLING"] = 0x1234_5678_9ABC_DEF0
    msg.add_message_integrity(server_pwd.encode())
    msg.add_fingerprint()
    return bytes(msg)


def publisher_socket(publisher: Publisher):
    """The publisher's nominated ICE pair: its transport (the socket) and local address."""
    dtls = publisher.pc.getTransceivers()[0].sender.transport
    pair = dtls.transport._connection._nominated[1]
    return pair.protocol.transport, pair.local_addr


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("shards", [2, 1])
def test_spoofed_checks_neither_move_nor_add_a_route(server_factory, arun, shards):
    """With two shards the receive loop's routes are at stake; with one, the
    receive loop shares the shard's thread and the forwarder's own routes are."""
    server = server_factory(extra_args=["--media-threads", str(shards), "--connect-timeout", "120"])
    ivs = server.client()
    stage = ivs.create_stage(name="stun-spoofing")["stage"]
    whip = stage["endpoints"]["whip"]

    def token(user, caps):
        return ivs.create_participant_token(stageArn=stage["arn"], userId=user,
                                            capabilities=list(caps))["participantToken"]

    async def go():
        c = Cleanup()
        try:
            tp = token("host", ("PUBLISH",))
            p = c.add(Publisher("host", colour=RED, tone=440.0, video_codec="video/VP8"))
            assert (await p.publish(whip, tp["token"])).status_code == 201
            await p.wait_connected()
            # Subscribers go to the least-loaded shard (the first shard on a tie), so
            # three honest viewers and then three attackers each hold both shards.
            viewers, attackers = [], []
            for i in range(6):
                s = c.add(Subscriber(f"viewer {i}" if i < 3 else f"attacker {i - 3}"))
                assert (await s.subscribe(whip, tp["participantId"], token(f"v{i}", ("SUBSCRIBE",))["token"])
                        ).status_code == 201
                (viewers if i < 3 else attackers).append(s)
            await asyncio.gather(*(s.wait_connected(timeout=15) for s in viewers + attackers))
            for s in viewers:
                await s.wait_video(10, timeout=15)
            base_rss = rss_kib(server.proc.pid)

            # 1. Each attacker's valid check, from the publisher's exact address.
            transport, publisher_addr = publisher_socket(p)
            media = ("127.0.0.1", server.media_port)
            checks = [signed_check(s) for s in attackers]
            # One attacker at a time (the last check sent decided the route), each
            # for a window: the publisher's own consent checks (every few seconds)
            # would win its route back, so the spoofing goes on throughout it.
            for attacker, check in zip(attackers, checks):
                t1 = time.monotonic()
                while time.monotonic() - t1 < SPOOF_WINDOW:
                    transport.sendto(check, media)
                    await asyncio.sleep(0.02)
                for s in viewers:
                    frames = [a for a in s.video.arrivals if a > t1]
                    gaps = [b - a for a, b in zip([t1] + frames, frames + [time.monotonic()])]
                    # A loaded machine decodes slowly; before, no frame came at all.
                    assert len(frames) >= 5, (
                        f"{s.label}: {len(frames)} frames, longest gap {max(gaps):.1f} s in the "
                        f"{SPOOF_WINDOW} s that {attacker.label} spoofed checks from the publisher's "
                        f"address {publisher_addr}")

            # 2. A flood of valid checks from 300,000 addresses.
            started = time.monotonic()
            flood = await asyncio.create_subprocess_exec(
                sys.executable, "-c", FLOOD_SCRIPT, str(server.media_port), str(FLOOD), *(m.hex() for m in checks),
                stdin=subprocess.DEVNULL)
            try:
                assert await asyncio.wait_for(flood.wait(), 90) == 0
            finally:
                if flood.returncode is None:
                    flood.kill()
                    await flood.wait()
            sent_in = time.monotonic() - started
            # With one shard the flood (faster than a shard forwards) sheds media
            # while it lasts; a viewer's video then resumes at a keyframe.
            # How soon depends on when the viewer's decoder asks for a keyframe and how
            # fast this one Python process (a publisher, six viewers) decodes on a
            # loaded machine; what matters is that the video comes back.
            t2 = time.monotonic()
            for s in viewers:
                while s.video.frames_after(t2) < 15 and time.monotonic() - t2 < RECOVERY_SECONDS:
                    await asyncio.sleep(0.1)
                assert s.video.frames_after(t2) >= 15, (
                    f"{s.label}: {s.video.frames_after(t2)} frames in {RECOVERY_SECONDS} s after the flood")
            grown = rss_kib(server.proc.pid) - base_rss
            print(f"{FLOOD} checks sent in {sent_in:.1f} s; RSS grew by {grown} KiB")
            assert grown < 20 * 1024, f"RSS grew by {grown} KiB over {FLOOD} spoofed checks"
            # The control plane still answers signed calls.
            assert ivs.get_stage(arn=stage["arn"])["stage"]["arn"] == stage["arn"]
        finally:
            await c.close()

    arun(go(), timeout=200)
