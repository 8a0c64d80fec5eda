"""A relay that freezes right after its first enqueue, before it marks rows published.

The bus test SIGKILLs it at exactly that point: the worst moment for a relay to die.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.config import load_settings
from shared.events import load_subscriptions
from shared.relay import OutboxRelay
from shared.runtime import Runtime


class FreezeAfterEnqueue:
    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def enqueue_job(self, *args: Any, **kwargs: Any) -> Any:
        await self.real.enqueue_job(*args, **kwargs)
        print("ENQUEUED", flush=True)
        await asyncio.sleep(3600)


async def main() -> None:
    settings = load_settings()
    assert settings.database_url and settings.redis_url
    runtime = await Runtime.open(settings, settings.database_url, settings.redis_url)
    registry = load_subscriptions(extra_modules=settings.extra_task_modules)
    runtime.redis = FreezeAfterEnqueue(runtime.redis)  # type: ignore[assignment]
    await OutboxRelay(runtime, registry).publish_pending()


if __name__ == "__main__":
    asyncio.run(main())
