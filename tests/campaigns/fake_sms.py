"""A fake SMS gateway for tests: real HTTP on 127.0.0.1 (its own thread), checking the
signature of every request, recording every message (services/campaigns/sends/sms.py
is the contract). `lose_answers(n)`: the next n sends are made, then answered 502."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from tests.users.fake_wecom import serve_in_thread, stop_served


class FakeSms:
    def __init__(
        self,
        api_key: str = "sms-key",
        secret: str = "sms-secret-0123456789",  # noqa: S107 - a test double's credential
    ) -> None:
        self.api_key = api_key
        self.secret = secret
        self.base_url = ""
        self.messages: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.refused_signatures = 0
        self._lost = 0
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> FakeSms:
        self._server, self._thread, self.base_url = await serve_in_thread(self._asgi, "SMS")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None and self._thread is not None:
            await stop_served(self._server, self._thread)

    def lose_answers(self, n: int = 1) -> None:
        with self._lock:
            self._lost += n

    def sign(self, body: bytes) -> dict[str, str]:
        """Headers of a receipt the gateway sends us."""
        timestamp = str(int(time.time()))
        mac = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        return {
            "Content-Type": "application/json",
            "X-Timestamp": timestamp,
            "X-Signature": "sha256=" + mac.hexdigest(),
        }

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        response = self._handle(request, body)
        await response(scope, receive, send)

    def _handle(self, request: Request, body: bytes) -> JSONResponse:
        timestamp = request.headers.get("x-timestamp", "")
        expected = (
            "sha256="
            + hmac.new(
                self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        if request.headers.get("x-api-key") != self.api_key or not hmac.compare_digest(
            expected, request.headers.get("x-signature", "")
        ):
            with self._lock:
                self.refused_signatures += 1
            return JSONResponse({"code": "bad_signature", "message": "no"}, status_code=401)
        with self._lock:
            self.calls[f"{request.method} {request.url.path}"] += 1
            if request.method == "GET":
                reference = request.query_params.get("reference")
                items = [
                    {"id": m["id"], "status": "accepted"}
                    for m in self.messages
                    if m["reference"] == reference
                ]
                return JSONResponse({"items": items})
            message = json.loads(body)
            if not str(message.get("to", "")).startswith("+"):
                return JSONResponse({"code": "bad_number", "message": "to"}, status_code=400)
            message["id"] = "sms" + secrets.token_hex(6)
            self.messages.append(message)
            if self._lost:
                self._lost -= 1
                return JSONResponse({"code": "bad_gateway"}, status_code=502)
            return JSONResponse({"id": message["id"], "status": "accepted"})
