"""The fake WeCom server as a process of its own (benchmarks: it answers without sharing
the load generator's interpreter).

    python -m tests.users.fake_wecom_serve --corp-id ww... --secret ...

prints its base URL on the first line, then serves until SIGTERM. `GET /_fake/messages`
lists every messaging call it recorded: `[[name, body, unix time], ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from tests.users.fake_wecom import FakeWeCom


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with FakeWeCom(corp_id=args.corp_id, secret=args.secret) as fake:
        print(fake.base_url, flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--corp-id", required=True)
    parser.add_argument("--secret", required=True)
    asyncio.run(main(parser.parse_args()))
