"""The HTTP ceiling: a bare FastAPI endpoint that only answers `success`.

Served exactly like `scrm up` serves the API (uvicorn, one process, same loop
and HTTP implementation), so the benchmark can say how close the real
callback path comes to what the HTTP stack alone allows.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.post("/v1/wecom/{tenant_slug}/callback", response_class=PlainTextResponse)
async def callback(tenant_slug: str) -> PlainTextResponse:
    return PlainTextResponse("success")


@app.post("/v1/webhooks/{tenant_slug}/events", response_class=PlainTextResponse)
async def webhook(tenant_slug: str) -> PlainTextResponse:
    return PlainTextResponse("success")
