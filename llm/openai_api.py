"""The OpenAI-compatible surface of the emulator as vLLM 0.32 shapes it: request fields,
error bodies, prompt token counts, response and stream chunks.

Errors follow vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``
with the HTTP status in ``code``. A body that is not JSON or whose fields do not validate
is a 400 of type ``"Bad Request"`` listing the validation errors, with ``param`` the
dotted location of the first one (``body.max_tokens``), as FastAPI's validation handler
in ``vllm/entrypoints/serve/exception_handling/handlers/validation.py``; a length
problem is a 400 ``BadRequestError`` (``vllm/renderers/params.py``); an unknown model a
404 ``NotFoundError`` with param ``model`` (``vllm/entrypoints/serve/engine/serving.py``).

Prompt tokens: with a ``tokenizer.json`` the ``tokenizers`` library counts them (special
tokens such as BOS included for completions, as vLLM's ``add_special_tokens`` default;
for chat the model's chat template is rendered with jinja2 and tokenized without adding
special tokens, as vLLM does). Without a template a chat costs its contents plus
``CHAT_MESSAGE_OVERHEAD`` tokens a message and ``CHAT_REPLY_OVERHEAD`` for the reply's
header (Llama 3's template: 5 and 5). Without a tokenizer a text counts its whitespace
words plus one (BOS). A list of token ids is its length.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kservebench.errors import SpecError

CHAT_MESSAGE_OVERHEAD = 5  # role header and end-of-turn markers around each message
CHAT_REPLY_OVERHEAD = 5  # BOS and the assistant header the generation prompt adds
FILLER = (" lorem", " ipsum", " dolor", " sit", " amet")  # output text, one token each
_FILLER_JSON = tuple(json.dumps(t) for t in FILLER)
_COMPACT = (",", ":")  # as pydantic's model_dump_json, which vLLM streams
MAX_REPORTED_ERRORS = 10  # as vLLM: a huge malformed body must not make a huge answer
VLLM_VERSION = "0.32.0"  # the vLLM release whose API and metrics are mirrored
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-emulator"  # vLLM's: vllm-<version>-<8 hex>

# -- errors -----------------------------------------------------------------------------------


class RequestError(Exception):
    """A request the server refuses, with vLLM's status, type and param."""

    def __init__(
        self, message: str, status: int = 400, err_type: str = "BadRequestError", param=None
    ) -> None:
        super().__init__(message)
        self.status, self.err_type, self.param = status, err_type, param

    def body(self) -> dict[str, Any]:
        return error_body(str(self), self.err_type, self.status, self.param)


def invalid(message: str, param: str, value: Any = None) -> RequestError:
    """vLLM's VLLMValidationError as a 400: the message ends with '(parameter=..., value=...)'."""
    extras = [f"parameter={param}"] + ([] if value is None else [f"value={value}"])
    return RequestError(f"{message} ({', '.join(extras)})", param=param)


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _summarize(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "...[truncated]"
    if isinstance(value, list | tuple | set | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    return value


def validation_failure(errors: list[dict[str, Any]]) -> RequestError:
    """vLLM's 400 for a body that does not validate: 'N validation error(s):' and one
    line per error (location dotted, the offending input summarized)."""
    param = None
    lines = []
    for err in errors[:MAX_REPORTED_ERRORS]:
        err = dict(err)
        loc = ".".join(str(p) for p in err.get("loc", ()))
        err["loc"] = loc
        if "input" in err:
            err["input"] = _summarize(err["input"])
        param = loc if param is None else param
        lines.append(f"  {err}")
    label = "error" if len(errors) == 1 else "errors"
    message = "\n".join([f"{len(errors)} validation {label}:", *lines])
    if len(errors) > MAX_REPORTED_ERRORS:
        message += f"\n  ...and {len(errors) - MAX_REPORTED_ERRORS} more {label}"
    return RequestError(message, 400, "Bad Request", param)


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """The request body as ``model``, or the RequestError vLLM would answer."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        pos, msg = (err.pos, err.msg) if isinstance(err, json.JSONDecodeError) else (0, str(err))
        error = {"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error"}
        raise validation_failure([{**error, "input": {}, "ctx": {"error": msg}}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        for e in errors:
            e["loc"] = ("body", *e["loc"])
        raise validation_failure(errors) from None


# -- requests ---------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # as vLLM: unknown fields are ignored

    model: str | None = None
    n: int = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # output length is always max_tokens here


TokenId = Annotated[int, Field(ge=0)]


class CompletionRequest(_Request):
    prompt: list[TokenId] | list[list[TokenId]] | str | list[str] | None = None
    max_tokens: int | None = 16


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


def single_prompt(req: CompletionRequest) -> str | list[int]:
    """The one prompt of a completion request (a batch of prompts is refused)."""
    p = req.prompt
    if p is None or p == "":
        raise invalid("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    if isinstance(p, list) and p and isinstance(p[0], str | list):
        if len(p) != 1:
            raise invalid("the emulator serves one prompt per request", "prompt")
        p = p[0]
    assert p is not None
    return p


def output_budget(requested: int | None, param: str, prompt_tokens: int, max_model_len: int) -> int:
    """The tokens a request generates, or vLLM 0.32's 400. Since 0.32 a prompt plus
    max_tokens beyond max_model_len is no error: max_tokens is cut to what is left
    (``get_max_tokens`` in vllm/entrypoints/serve/utils/api_utils.py); a request that
    leaves no room, or asks for more than max_model_len, or whose prompt alone is too
    long, is refused with vLLM's messages."""
    if requested is not None and requested > max_model_len:
        raise invalid(
            f"{param}={requested} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.",
            param,
            requested,
        )
    if prompt_tokens == 0:
        raise RequestError("The decoder prompt cannot be empty")  # no param in vLLM either
    if prompt_tokens > max_model_len:
        raise invalid(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {prompt_tokens} input tokens, which exceeds this limit even "
            "without any output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
            prompt_tokens,
        )
    room = max_model_len - prompt_tokens
    tokens = room if requested is None else min(requested, room)
    if tokens < 1:
        raise invalid(f"max_tokens must be at least 1, got {tokens}.", "max_tokens", tokens)
    return tokens


# -- prompt tokens ----------------------------------------------------------------------------


class PromptCounter:
    """Counts prompt tokens; see the module docstring for the rules."""

    def __init__(self, tokenizer: Any = None, template: str | None = None, specials=None):
        self.tokenizer = tokenizer
        self.specials: dict[str, str] = specials or {}
        self._template = None
        if template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(template)

    @classmethod
    def load(cls, model: str | None, tokenizer: str | None) -> PromptCounter:
        """From ``--tokenizer`` (a folder or a tokenizer.json) or else the ``--model``
        folder; a model that is a name, not a folder, counts words."""
        option, source = ("--tokenizer", tokenizer) if tokenizer else ("--model", model)
        if not source:
            return cls()
        path = Path(source)
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.is_file():
            if tokenizer:
                raise SpecError(option, source, "has no tokenizer.json")
            return cls()
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise SpecError(option, source, "counting with it needs `tokenizers`") from None
        config: dict[str, Any] = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        template_file = file.parent / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else None
        template = template or config.get("chat_template")
        specials = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
        return cls(Tokenizer.from_file(str(file)), template, specials)

    def count_text(self, text: str, add_special_tokens: bool = True) -> int:
        if self.tokenizer is None:
            return len(text.split()) + (1 if add_special_tokens else 0)
        return len(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def count_prompt(self, prompt: str | list[int]) -> int:
        return len(prompt) if isinstance(prompt, list) else self.count_text(prompt)

    def count_chat(self, messages: list[ChatMessage]) -> int:
        if self._template is not None:
            plain = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in messages]
            try:
                text = self._template.render(
                    messages=plain,
                    add_generation_prompt=True,
                    raise_exception=_raise_template_error,
                    **self.specials,
                )
            except Exception as err:  # a template error is the request's problem in vLLM
                raise RequestError(f"chat template: {err}") from None
            return self.count_text(text, add_special_tokens=False)
        contents = sum(self.count_text(m.text(), add_special_tokens=False) for m in messages)
        return contents + CHAT_MESSAGE_OVERHEAD * len(messages) + CHAT_REPLY_OVERHEAD


def _raise_template_error(message: str) -> None:
    raise ValueError(message)


# -- responses --------------------------------------------------------------------------------


def filler_text(n: int) -> str:
    return "".join(FILLER[i % len(FILLER)] for i in range(n))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


class Reply:
    """One request's answer, streamed (``data:`` events, one token each) or whole."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int, max_tokens: int) -> None:
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        self.created = int(time.time())
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._envelope = {"id": self.id, "object": kind, "created": self.created, "model": model}
        self._head = json.dumps(self._envelope, separators=_COMPACT)[:-1] + ',"choices":['
        self._text_key = '{"index":0,"delta":{"content":' if chat else '{"index":0,"text":'
        self._close = "}" if chat else ""

    def _event(self, choice: str) -> str:
        return f"data: {self._head}{choice}]}}\n\n"

    def first_event(self) -> str:
        """Chat streams open with the assistant role and empty content (as vLLM)."""
        if not self.chat:
            return ""
        delta = '{"index":0,"delta":{"role":"assistant","content":""},'
        return self._event(delta + '"logprobs":null,"finish_reason":null}')

    def token_events(self, start: int, stop: int) -> str:
        """Events for tokens ``start`` .. ``stop - 1``; the last token carries the finish."""
        out = []
        for i in range(start, stop):
            finish = '"length"' if i == self.max_tokens - 1 else "null"
            text = _FILLER_JSON[i % len(FILLER)]
            tail = f',"logprobs":null,"finish_reason":{finish},"stop_reason":null}}'
            out.append(self._event(f"{self._text_key}{text}{self._close}{tail}"))
        return "".join(out)

    def usage_event(self) -> str:
        """The last event with ``stream_options.include_usage``: no choices, the usage."""
        body = {**self._envelope, "choices": [], "usage": self.usage()}
        body["system_fingerprint"] = SYSTEM_FINGERPRINT
        return f"data: {json.dumps(body, separators=_COMPACT)}\n\n"

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.max_tokens)

    def whole(self) -> dict[str, Any]:
        text = filler_text(self.max_tokens)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
            }
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason="length", stop_reason=None)
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": self.usage(),
        }


def model_list(name: str, root: str, max_model_len: int, created: int) -> dict[str, Any]:
    """``GET /v1/models`` as vLLM answers it for one served model."""
    card = {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
    return {"object": "list", "data": [card]}
