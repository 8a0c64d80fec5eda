"""The SMS provider: one HTTP gateway client, signed requests, delivery receipts.

The gateway's contract (the tenant sets `sms_provider` in its campaign settings):

- `POST {base_url}/v1/messages` with `{"to": "+86...", "text": ..., "sign_name": ...,
  "reference": <our send key>}`, headers `X-Api-Key`, `X-Timestamp` (Unix seconds)
  and `X-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`;
  answers `{"id": ..., "status": "accepted"}`, or an error with `{"code", "message"}`
  (4xx: refused, the send fails; 429/5xx: retried).
- `GET {base_url}/v1/messages?reference=<key>` (signed over the empty body): the
  messages made for a reference, `{"items": [{"id", "status"}]}`. A send claimed again
  after a lost answer asks this first, so a retry never sends a second SMS.
- Receipts: the gateway POSTs `{"id", "reference", "status": "delivered" | "failed",
  "error"}` to `POST /v1/sms/{tenant_slug}/receipts`, signed the same way (the same
  headers, the tenant's secret); the send becomes `delivered` or `failed`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from services.campaigns.governor.settings import SmsProvider

TIMEOUT_SECONDS = 10.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class SmsRefused(Exception):
    """The gateway refused the message (a 4xx): trying again cannot help."""


class SmsUnavailable(Exception):
    """No answer, or a 429/5xx: try again later (after asking what it has)."""


@dataclass(frozen=True)
class Accepted:
    id: str
    status: str


class SmsClient:
    def __init__(self, provider: SmsProvider, http: httpx.AsyncClient | None = None) -> None:
        self.provider = provider
        self._http = http or httpx.AsyncClient(timeout=TIMEOUT_SECONDS)
        self._owns = http is None

    async def aclose(self) -> None:
        if self._owns:
            await self._http.aclose()

    def _headers(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "X-Api-Key": self.provider.api_key,
            "X-Timestamp": timestamp,
            "X-Signature": signature(self.provider.secret, timestamp, body),
        }

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: bytes = kwargs.pop("content", b"")
        url = self.provider.base_url.rstrip("/") + path
        try:
            answer = await self._http.request(
                method, url, content=body, headers=self._headers(body), **kwargs
            )
        except httpx.HTTPError as exc:
            raise SmsUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if answer.status_code == 429 or answer.status_code >= 500:
            raise SmsUnavailable(f"HTTP {answer.status_code}")
        try:
            data = answer.json()
        except ValueError as exc:
            raise SmsUnavailable("the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise SmsUnavailable("the answer is not a JSON object")
        if answer.status_code >= 400:
            raise SmsRefused(f"{data.get('code', answer.status_code)}: {data.get('message', '')}")
        return data

    async def send(self, to: str, text: str, reference: str) -> Accepted:
        body = json.dumps(
            {
                "to": to,
                "text": text,
                "sign_name": self.provider.sign_name,
                "reference": reference,
            },
            ensure_ascii=False,
        ).encode()
        data = await self._request("POST", "/v1/messages", content=body)
        return Accepted(str(data["id"]), str(data.get("status", "accepted")))

    async def find(self, reference: str) -> list[Accepted]:
        data = await self._request("GET", "/v1/messages", params={"reference": reference})
        return [Accepted(str(i["id"]), str(i.get("status", ""))) for i in data.get("items") or []]
