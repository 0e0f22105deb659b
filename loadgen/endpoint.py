"""A small real HTTP endpoint for tests and the capacity benchmark (not a model server).

``python -m kservebench.loadgen.endpoint --port P [--delay-ms 200] [--pod NAME]`` serves,
with uvicorn, a raw ASGI app that answers:

- ``POST /v1/models/<m>:predict`` and ``POST /v2/models/<m>/infer`` after ``--delay-ms``
  (asyncio sleep, so slow responses overlap like a server with free capacity), with the
  header ``x-serving-pod: <pod>``;
- ``POST .../v1/completions`` and ``.../v1/chat/completions`` with ``stream: true`` as
  server-sent events: ``--tokens`` text events ``--token-delay-ms`` apart, then a usage
  event and ``data: [DONE]`` (OpenAI's streaming format);
- ``GET`` anything: ``200 ok`` (health checks, and the trivial endpoint the benchmark
  compares Locust with wrk on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

POD_HEADER = "x-serving-pod"


def make_app(delay_s: float, pod: str, tokens: int, token_delay_s: float) -> Any:
    pod_header = (POD_HEADER.encode(), pod.encode())

    async def read_body(receive: Any) -> bytes:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                return body

    async def reply(send: Any, status: int, body: bytes, ctype: bytes) -> None:
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send(
            {"type": "http.response.start", "status": status, "headers": [*headers, pod_header]}
        )
        await send({"type": "http.response.body", "body": body})

    async def stream_tokens(send: Any, chat: bool, model: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), pod_header],
            }
        )
        for i in range(tokens):
            await asyncio.sleep(token_delay_s)
            piece = f"tok{i} "
            text = {"delta": {"content": piece}} if chat else {"text": piece}
            choice = {"index": 0, **text}
            event = {"id": "x", "model": model, "choices": [choice]}
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {json.dumps(event)}\n\n".encode(),
                    "more_body": True,
                }
            )
        usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
        final = f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"
        await send({"type": "http.response.body", "body": final.encode()})

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        if method == "GET":
            await reply(send, 200, b"ok", b"text/plain")
            return
        body = await read_body(receive)
        if path.endswith("/completions"):
            request = json.loads(body or b"{}")
            await stream_tokens(send, path.endswith("chat/completions"), request.get("model", ""))
            return
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        request = json.loads(body or b"{}")
        if path.endswith(":predict"):
            rows = len(request.get("instances", []))
            await reply(
                send, 200, json.dumps({"predictions": [0] * rows}).encode(), b"application/json"
            )
        elif path.endswith("/infer"):
            shape = request["inputs"][0]["shape"]
            output = {
                "name": "output-0",
                "shape": [shape[0]],
                "datatype": "INT64",
                "data": [0] * shape[0],
            }
            await reply(send, 200, json.dumps({"outputs": [output]}).encode(), b"application/json")
        else:
            await reply(send, 404, b"not found", b"text/plain")

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--pod", default="endpoint-0")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    app = make_app(args.delay_ms / 1000, args.pod, args.tokens, args.token_delay_ms / 1000)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,  # tests stop it with requests still sleeping
    )


if __name__ == "__main__":
    main()
