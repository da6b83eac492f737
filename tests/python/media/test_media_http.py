"""The participant endpoints as a web app on another origin uses them (BEHAVIOUR §4):
CORS preflights for publish, subscribe and DELETE, `Location` exposed to scripts,
and the request shape WHIP requires."""

from __future__ import annotations

import asyncio

import pytest
import requests

from media_peers import Cleanup, Publisher, describe

ORIGIN = "http://app.example.test"


def header_list(resp, name: str) -> set[str]:
    return {x.strip().lower() for x in resp.headers.get(name, "").split(",") if x.strip()}


@pytest.mark.parametrize("path,method", [("/whip", "POST"), ("/whip/subscribe/AAAAAAAAAAAA", "POST"),
                                         ("/whip/resource/AAAAAAAAAAAA", "DELETE")])
def test_cors_preflight(stage, path, method):
    base = stage["endpoints"]["whip"].rsplit("/whip", 1)[0]
    r = requests.options(base + path, timeout=10, headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert 200 <= r.status_code < 300, describe(r)
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), describe(r)
    methods = header_list(r, "Access-Control-Allow-Methods")
    assert method.lower() in methods, describe(r)
    allowed = header_list(r, "Access-Control-Allow-Headers")
    # a "*" wildcard does not cover Authorization (Fetch standard): it must be named
    assert {"authorization", "content-type"} <= allowed, describe(r)


def test_publish_answer_exposes_location_to_scripts(stage, token_for, arun):
    whip = stage["endpoints"]["whip"]
    t = token_for(stage, "web-app", ("PUBLISH",))

    async def go():
        c = Cleanup()
        try:
            p = c.add(Publisher("publisher", tone=440.0))
            await p.make_offer()
            resp = await asyncio.to_thread(requests.post, whip, data=p.offer_sdp.encode(), timeout=10, headers={
                "Authorization": f"Bearer {t['token']}", "Content-Type": "application/sdp", "Origin": ORIGIN})
            assert resp.status_code == 201, describe(resp)
            assert resp.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), describe(resp)
            exposed = header_list(resp, "Access-Control-Expose-Headers")
            assert "location" in exposed or "*" in exposed, describe(resp)
            r = await asyncio.to_thread(requests.delete, requests.compat.urljoin(whip, resp.headers["Location"]),
                                        timeout=10, headers={"Origin": ORIGIN})
            assert r.status_code == 200, describe(r)
        finally:
            await c.close()

    arun(go(), timeout=30)


def test_publish_needs_application_sdp(stage, token_for):
    t = token_for(stage, "wrong-type", ("PUBLISH",))
    r = requests.post(stage["endpoints"]["whip"], data=b"v=0\r\n", timeout=10,
                      headers={"Authorization": f"Bearer {t['token']}", "Content-Type": "application/json"})
    assert r.status_code == 415, describe(r)
    assert r.headers.get("Content-Type", "").startswith("text/plain"), describe(r)
