"""The events WebSocket: a frame announcing 16 MiB is refused at its header, not
read into memory up to the 4 KiB message limit; a real publish and subscribe carry
on meanwhile."""

from __future__ import annotations

import base64
import os
import select
import struct

from attacks import MIB, Health, connect, held


def open_events_socket(server, token: str, stage_id: str):
    s = connect(server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /events/{stage_id} HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: {token}\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = s.recv(4096)
        assert chunk, f"closed during the handshake: {reply!r}"
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 101"), reply[:200]
    return s


def test_a_16_mib_frame_is_refused_at_its_header(target):
    health = Health(target)
    c = target.client()
    stage = c.create_stage(name="frames")["stage"]
    token = c.create_participant_token(stageArn=stage["arn"])["participantToken"]["token"]
    sockets = []
    with held(sockets):
        for _ in range(20):
            s = open_events_socket(target, token, stage["arn"].rsplit("/", 1)[1])
            sockets.append(s)
            # FIN + text, masked, 64-bit length of 16 MiB.
            s.sendall(bytes([0x81, 0x80 | 127]) + struct.pack(">Q", 16 * MIB) + os.urandom(4))
            s.setblocking(False)
            sent = 0
            try:
                for _ in range(16):
                    sent += s.send(b"\0" * (64 * 1024))
            except OSError:
                pass
            s.setblocking(True)
            s.settimeout(5)
            closed = False
            while True:
                ready, _, _ = select.select([s], [], [], 5)
                assert ready, "the server kept reading a 16 MiB frame"
                try:
                    data = s.recv(65536)
                except OSError:
                    closed = True
                    break
                if not data or b"\x88" in data[:64]:
                    closed = True
                    break
            assert closed
            health.sample()
        health.check()
        health.check_media()
    health.check()
    health.assert_memory()
    health.report("websocket-frame", sockets=20, announced_bytes_each=16 * MIB,
                  media_round_trip_seconds=f"{health.last_media_seconds:.2f}")
