"""A lean webhook receiver for the delivery benchmark: asyncio, keep-alive HTTP/1.1, checks the
signature of every request and applies each Idempotency-Key once. Runs in its own process so
that it does not share the dispatcher's interpreter lock.

    python bench/delivery/receiver.py PORT SECRET
    # GET /stats -> {"requests", "applied", "bad", "cpu"}: "cpu" is this process's CPU seconds,
    # to show that the receiver (sharing the machine) is not what limits the benchmark
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from rapport.delivery.webhook import verify


class Stats:
    requests = 0
    bad = 0
    applied: set[str] = set()


def make_protocol(secret: str) -> type[asyncio.Protocol]:
    class Hook(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].decode("latin-1").split("\r\n")
                headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
                lower = {k.lower(): v for k, v in headers.items()}
                length = int(lower.get("content-length", 0))
                if len(self.buffer) < end + 4 + length:
                    return
                body = self.buffer[end + 4 : end + 4 + length]
                self.buffer = self.buffer[end + 4 + length :]
                self.answer(head[0], lower, body)

        def answer(self, request_line: str, headers: dict[str, str], body: bytes) -> None:
            if request_line.startswith("GET /stats"):
                stats = {
                    "requests": Stats.requests,
                    "applied": len(Stats.applied),
                    "bad": Stats.bad,
                    "cpu": time.process_time(),
                }
                out = json.dumps(stats).encode()
            else:
                Stats.requests += 1
                if verify(secret, headers, body):
                    Stats.applied.add(headers.get("idempotency-key", ""))
                else:
                    Stats.bad += 1
                out = b'{"ok":true}'
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(out)).encode()
                + b"\r\n\r\n"
                + out
            )

    return Hook


async def main(port: int, secret: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(make_protocol(secret), "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
