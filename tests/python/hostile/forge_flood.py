"""Sends `count` unauthenticated WHIP publishes with one forged token, as fast as
`connections` keep-alive connections allow, and prints what came back as JSON.

    python forge_flood.py HOST PORT TOKEN COUNT CONNECTIONS TIME_LIMIT_SECONDS

Runs in a process of its own so that the test's media peers keep their event loop.
Stops at `count` requests or at the time limit, whichever comes first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

OFFER = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
         "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n"
         "a=rtpmap:111 opus/48000/2\r\n").encode()


async def worker(host, port, request, quota, statuses, deadline):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while quota[0] > 0 and time.monotonic() < deadline:
            quota[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def main():
    host, port, token, count, conns, limit = sys.argv[1:7]
    request = (f"POST /whip HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/sdp\r\nContent-Length: {len(OFFER)}\r\n\r\n").encode() + OFFER
    quota, statuses = [int(count)], {}
    start = time.monotonic()
    deadline = start + float(limit)
    results = await asyncio.gather(*(worker(host, int(port), request, quota, statuses, deadline)
                                     for _ in range(int(conns))), return_exceptions=True)
    elapsed = time.monotonic() - start
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    print(json.dumps({"statuses": statuses, "elapsed": elapsed, "errors": errors[:5]}))


if __name__ == "__main__":
    asyncio.run(main())
