#!/usr/bin/env python3
"""A publisher in a process of its own, so a test can make it vanish (SIGKILL: no
DELETE, no DTLS close, no more ICE) and watch onstage notice.

    peer_process.py WHIP_URL TOKEN

Prints one JSON line when connected ({"connected": true, "location": ...}) or on
failure ({"error": ...}), then keeps publishing until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import media_peers  # noqa: E402


async def main(whip: str, token: str) -> int:
    media_peers.use_loopback_ice()
    p = media_peers.Publisher("vanishing publisher", colour=(120, 120, 120), tone=440.0, video_codec="video/VP8")
    resp = await p.publish(whip, token)
    if resp.status_code != 201:
        print(json.dumps({"error": media_peers.describe(resp)}), flush=True)
        return 1
    try:
        await p.wait_connected(10)
    except AssertionError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    print(json.dumps({"connected": True, "location": p.location}), flush=True)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
