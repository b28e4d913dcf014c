"""The health port is unauthenticated and reachable by anything in the pod network: it must
bound what one client can make it hold (bytes, time) and how many clients it serves."""

from __future__ import annotations

import asyncio
import time

from fleet_worker.app import App
from fleet_worker.health import HealthServer
from fleet_worker.runtime import Worker
from fleet_worker.settings import WorkerSettings


def server() -> HealthServer:
    settings = WorkerSettings.model_validate(
        {"database_url": "postgresql://user:secret@db/x", "app": "m", "health_port": 0}
    )
    return HealthServer(Worker(settings, App("t")).snapshot, "127.0.0.1", 0)


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def closed_after(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), timeout) == b""
    except ConnectionError:
        return True  # reset: closed all the same
    except TimeoutError:
        return False


def test_a_slow_client_is_cut_off() -> None:
    async def go() -> float:
        health = server()
        await health.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
            writer.write(b"GET /healthz HTTP/1.0\r\n")
            started = time.monotonic()
            # One header line every second: each arrives well within any per-line timeout.
            for _ in range(12):
                await asyncio.sleep(1)
                if reader.at_eof():
                    break
                try:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                except ConnectionError:
                    break
                if await closed_after(reader, 0.01):
                    break
            held = time.monotonic() - started
            writer.close()
            return held
        finally:
            await health.stop()

    assert asyncio.run(go()) < 8


def test_oversized_headers_are_refused() -> None:
    async def go() -> bytes:
        health = server()
        await health.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
            writer.write(b"GET /healthz HTTP/1.0\r\n")
            try:
                for _ in range(200):  # 22 KB, well over any sane limit
                    writer.write(b"X-Filler: " + b"a" * 100 + b"\r\n")
                    await writer.drain()
            except ConnectionError:
                pass
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data
        finally:
            await health.stop()

    assert asyncio.run(go()).startswith(b"HTTP/1.0 431")


def test_idle_connections_beyond_the_limit_are_closed_and_probes_still_answer() -> None:
    async def go() -> tuple[int, bytes, bytes]:
        health = server()
        await health.start()
        try:
            conns = [await asyncio.open_connection("127.0.0.1", health.port) for _ in range(200)]
            closed = await asyncio.gather(*(closed_after(r, 1.0) for r, _ in conns))
            probe = await get(health.port, "/healthz")
            metrics = await get(health.port, "/metrics")
            for _, w in conns:
                w.close()
            return sum(closed), probe, metrics
        finally:
            await health.stop()

    closed, probe, metrics = asyncio.run(go())
    assert closed >= 200 - 64  # at most 64 clients are held at once
    assert probe.startswith(b"HTTP/1.0 200")
    assert metrics.startswith(b"HTTP/1.0 200") and b"secret" not in metrics
