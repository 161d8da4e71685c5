"""Job events over Redis pub/sub, so a long-polling client hears of its job's end on whichever
replica it waits. Redis is optional: without it (or while it is down) the replica asks the
dispatcher, which records every end, to tell it; failing that it reads the database every
`FALLBACK_POLL_S`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("dotnet_scripts.events")

FALLBACK_POLL_S = 0.25  #: database re-read interval when Redis cannot tell us


def channel(job_id: uuid.UUID) -> str:
    return f"dotnet-scripts:job:{job_id}"


class Events:
    def __init__(self, url: str):
        self.client = aioredis.from_url(url, socket_connect_timeout=1, socket_timeout=2) if url else None

    async def publish(self, job_id: uuid.UUID, status: str) -> None:
        if self.client is None:
            return
        try:
            await self.client.publish(channel(job_id), status)
        except (RedisError, OSError) as e:
            log.warning("could not publish job event (%s); waiting clients fall back to the database", type(e).__name__)

    async def wait(self, job_id: uuid.UUID, seconds: float, ended: Callable[[], Awaitable[bool]],
                   fallback: Callable[[uuid.UUID, float], Awaitable[None]] | None = None) -> None:
        """Returns when `ended()` holds or `seconds` have passed, whichever is first. Without Redis,
        `fallback(job_id, seconds)` (the dispatcher) is asked before the database is polled."""
        deadline = time.monotonic() + seconds
        if self.client is not None:
            try:
                async with self.client.pubsub() as ps:
                    await ps.subscribe(channel(job_id))
                    if await ended():  # it may have ended before we subscribed
                        return
                    while (left := deadline - time.monotonic()) > 0:
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=min(left, 1.0))
                        if msg is not None and await ended():
                            return
                    return
            except (RedisError, OSError) as e:
                log.warning("Redis unavailable while waiting (%s); asking the dispatcher", type(e).__name__)
        if fallback is not None and (left := deadline - time.monotonic()) > 0:
            try:
                await fallback(job_id, left)
                return
            except Exception as e:  # the dispatcher is restarting: the database still knows
                log.warning("the dispatcher could not be asked (%s); polling the database", type(e).__name__)
        while not await ended() and time.monotonic() < deadline:
            await asyncio.sleep(min(FALLBACK_POLL_S, max(0.0, deadline - time.monotonic())))

    async def ping(self) -> dict:
        if self.client is None:
            return {"status": "UNKNOWN", "details": {"reason": "REDIS_URL is not set: long-polls read the database"}}
        try:
            await self.client.ping()
            return {"status": "UP"}
        except (RedisError, OSError) as e:
            return {"status": "DOWN", "details": {"error": type(e).__name__,
                                                  "effect": "long-polls fall back to reading the database"}}
