"""A vLLM-compatible server that runs the engine model in real time (``kservebench emulate``).

The engine, its clock and the requests in flight are ``kservebench.llm.emulator_engine``'s
(``EngineRunner``); ``Emulator`` adds the HTTP handlers, and ``build_app`` routes them. A
streaming handler writes one ``data:`` event per token (several at once when it was not
scheduled in between). Output is exactly the request's ``max_tokens`` (ignore_eos is
implied) of filler text.

Endpoints as vLLM 0.32's OpenAI server: ``POST /v1/completions`` and
``/v1/chat/completions`` (stream or not, ``stream_options.include_usage``), ``GET
/v1/models``, ``/health`` and ``/ping`` (503 while the model "loads", 200 after),
``/version``, ``/load``, ``/metrics`` (``kservebench.llm.vllm_metrics``). The ``/v1``
routes are also under ``/openai``, where KServe's huggingface runtime puts them. Shapes,
prompt counting and errors: ``kservebench.llm.openai_api``.

Divergences from vLLM: a client that disconnects does not abort its request (the engine
model has no abort; it runs to the end and counts as ``length``); one prompt and ``n=1``
per request; while loading, the server answers 503 everywhere (vLLM does not listen
yet: ``refuse_while_loading`` does that too).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kservebench.llm.emulator_engine import (
    DEFAULT_VARIANT,
    WAKE_JITTER_S,
    EmulatorConfig,
    EngineRunner,
    Flight,
    engine_settings,
)
from kservebench.llm.openai_api import (
    VLLM_VERSION,
    ChatCompletionRequest,
    CompletionRequest,
    Reply,
    RequestError,
    error_body,
    invalid,
    model_list,
    output_budget,
    parse_body,
    single_prompt,
)

__all__ = [  # the engine side lives in emulator_engine.py; importable from here too
    "DEFAULT_VARIANT", "EMULATOR", "WAKE_JITTER_S", "Emulator", "EmulatorConfig",
    "EngineRunner", "Handler", "build_app", "engine_settings", "run_emulator", "serve",
]  # fmt: skip


class Emulator(EngineRunner):
    """One emulated vLLM server: the engine runner and its HTTP handlers (aiohttp)."""

    def _check_ready(self) -> None:
        if not self.ready:
            raise RequestError("The model is still loading.", 503, "ServiceUnavailableError")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def load(self, request: web.Request) -> web.Response:
        return web.json_response({"server_load": self.in_flight})

    async def prometheus(self, request: web.Request) -> web.Response:
        self._check_ready()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        self._check_ready()
        root = self.config.model or self.variant.model.name
        max_len = self.engine_config.max_model_len or 0
        return web.json_response(model_list(self.model_name, root, max_len, self.created))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self._check_ready()
        raw = await request.read()
        req = parse_body(raw, ChatCompletionRequest if chat else CompletionRequest)
        if req.model and req.model != self.model_name:
            raise RequestError(
                f"The model `{req.model}` does not exist. Valid aliases: {self.model_name}.",
                404,
                "NotFoundError",
                "model",
            )
        if req.n != 1:
            raise invalid("the emulator generates one choice per request", "n", req.n)
        if isinstance(req, ChatCompletionRequest):
            prompt_tokens = self.prompts.count_chat(req.messages)
            if req.max_completion_tokens is not None:
                requested, param = req.max_completion_tokens, "max_completion_tokens"
            else:
                requested, param = req.max_tokens, "max_tokens"
        else:
            prompt_tokens = self.prompts.count_prompt(single_prompt(req))
            requested, param = (16 if req.max_tokens is None else req.max_tokens), "max_tokens"
        max_len = self.engine_config.max_model_len or 0
        max_tokens = output_budget(requested, param, prompt_tokens, max_len)
        reply = Reply(chat, self.model_name, prompt_tokens, max_tokens)
        flight = self.submit(reply)
        if not req.stream:
            while not flight.done:
                flight.event.clear()
                await flight.event.wait()
            return web.json_response(reply.whole())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await self._stream(request, flight, include_usage)

    async def _stream(
        self, request: web.Request, flight: Flight, include_usage: bool
    ) -> web.StreamResponse:
        reply = flight.reply
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        try:
            if first := reply.first_event():
                await response.write(first.encode())
            sent = 0
            while True:
                await flight.event.wait()
                flight.event.clear()
                if flight.tokens > sent:
                    events, sent = reply.token_events(sent, flight.tokens), flight.tokens
                    await response.write(events.encode())
                if flight.done:
                    break
            tail = (reply.usage_event() if include_usage else "") + "data: [DONE]\n\n"
            await response.write(tail.encode())
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; its request runs to the end in the engine
        return response


EMULATOR = web.AppKey("emulator", Emulator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals as vLLM's error JSON (unknown paths and methods too, as FastAPI's)."""
    try:
        return await handler(request)
    except RequestError as err:
        return web.json_response(err.body(), status=err.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(error_body(exc.reason, exc.reason, exc.status), status=exc.status)
    except Exception as exc:  # a bug here: vLLM's 500 body, and the traceback in the log
        traceback.print_exc(file=sys.stderr)
        body = error_body(repr(exc), "InternalServerError", 500)
        return web.json_response(body, status=500)


def build_app(config: EmulatorConfig | Emulator) -> web.Application:
    """The aiohttp application; the engine loop and the load delay start with it."""
    emulator = config if isinstance(config, Emulator) else Emulator(config)
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024**2)
    app[EMULATOR] = emulator
    app.router.add_get("/health", emulator.health)
    app.router.add_get("/ping", emulator.health)
    app.router.add_post("/ping", emulator.health)
    app.router.add_get("/version", emulator.version)
    app.router.add_get("/load", emulator.load)
    app.router.add_get("/metrics", emulator.prometheus)
    for prefix in ("", "/openai"):
        app.router.add_get(f"{prefix}/v1/models", emulator.models)
        app.router.add_post(f"{prefix}/v1/completions", emulator.completions)
        app.router.add_post(f"{prefix}/v1/chat/completions", emulator.chat_completions)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await emulator.start()
        yield
        await emulator.stop()

    app.cleanup_ctx.append(lifetime)
    return app


async def serve(
    config: EmulatorConfig | Emulator,
    host: str = "127.0.0.1",
    port: int = 8000,
    refuse_while_loading: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when it is None)."""
    emulator = config if isinstance(config, Emulator) else Emulator(config)
    config = emulator.config
    runner = web.AppRunner(build_app(emulator), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    where = f"http://{host}:{port}"
    say = f"emulate: {emulator.model_name} on {emulator.variant.name} at {where}"
    delay = f"{config.startup_delay_s:g} s"

    async def loaded() -> bool:
        """Wait for the model to load; False if told to stop first."""
        waits = [asyncio.ensure_future(e.wait()) for e in (emulator.loaded, stop)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        return emulator.loaded.is_set()

    try:
        if refuse_while_loading:
            print(f"{say}: loading for {delay}, not listening", file=sys.stderr, flush=True)
            if not await loaded():
                return
        await web.TCPSite(runner, host, port).start()
        if not emulator.ready:
            print(f"{say}: answering 503 while loading for {delay}", file=sys.stderr, flush=True)
            if not await loaded():
                return
        print(f"{say}: ready", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_emulator(
    config: EmulatorConfig | Emulator,
    host: str = "127.0.0.1",
    port: int = 8000,
    refuse_while_loading: bool = False,
) -> None:
    """Blocking: serve one emulated vLLM until SIGINT or SIGTERM."""
    asyncio.run(serve(config, host, port, refuse_while_loading))
