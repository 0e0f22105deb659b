"""Talking to KMock from tests: raw API calls and polling until a condition holds.

Shared by the ModelDeployment and Benchmark operator tests (importable because pytest's
``pythonpath`` includes ``tests/``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp


async def api(kmock: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to the mock API server; PATCH bodies are JSON merge patches."""
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None
    async with (
        aiohttp.ClientSession(base_url=str(kmock.url)) as session,
        session.request(method, path, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def eventually(read: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    """Poll an async ``read`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await read()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)
