"""OpenAI-compatible HTTP routes over the registry and the engine.

``GET /v1/models`` lists every available model (adapters as ``lora/<id>``);
``POST /v1/chat/completions`` answers, streamed (server-sent events) or not, with usage counts.
Errors use OpenAI's error shape and fitting status codes: 400 bad request, 401 bad API key,
404 unknown model, 409 model unavailable, 413 body too large.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from core.errors import StudioError
from core.machine import device
from core.models.inspect import context_length
from core.serve.engine import (
    Chunk,
    GenerationParams,
    InferenceEngine,
    ModelUnavailable,
    UnusableMessages,
    base_path,
)
from core.serve.registry import ModelRegistry, UnknownModel

MAX_BODY_BYTES = 1_000_000


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": None}
        return JSONResponse({"error": body}, status_code=self.status)


def _unicode(text: str) -> str:
    """JSON can carry lone surrogates (\\ud800), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class FunctionCall(BaseModel):
    name: Text
    arguments: Text  # JSON, as the model wrote it


class ToolCall(BaseModel):
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's
    tool_call_id: Text | None = None  # a tool's: the call it answers

    def as_dict(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        found = {"role": role, "content": content or ""}
        if self.tool_calls:
            found["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id:
            found["tool_call_id"] = self.tool_call_id
        return found


def check_messages(messages: list[Message]) -> None:
    """Each role's required fields, as OpenAI's API reference defines them (and answers
    with 400 naming the field): content for system, developer, user and tool messages;
    content or tool_calls for an assistant's; a tool message answers a call made before."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role != "assistant" and message.content is None:
            _missing(f"{where}.content", index, "content")
        if message.role == "assistant":
            if message.content is None and not message.tool_calls:
                raise APIError(
                    400,
                    f"Invalid value for '{where}.content': an assistant message needs "
                    "content or tool_calls.",
                    "invalid_request_error",
                    f"messages.[{index}].content",
                )
            calls |= {call.id for call in message.tool_calls or []}
        if message.role == "tool":
            if not message.tool_call_id:
                _missing(f"{where}.tool_call_id", index, "tool_call_id")
            if message.tool_call_id not in calls:
                raise APIError(
                    400,
                    f"Invalid parameter: '{where}': messages with role 'tool' must be a "
                    "response to a preceding message with 'tool_calls'.",
                    "invalid_request_error",
                    f"messages.[{index}].tool_call_id",
                )
        elif message.tool_call_id or (message.tool_calls and message.role != "assistant"):
            field = "tool_call_id" if message.tool_call_id else "tool_calls"
            raise APIError(
                400,
                f"Unrecognized parameter '{where}.{field}' for a message with role "
                f"'{message.role}'.",
                "invalid_request_error",
                f"messages.[{index}].{field}",
            )


def _missing(name: str, index: int, field: str) -> None:
    raise APIError(
        400,
        f"Missing required parameter: '{name}'.",
        "invalid_request_error",
        f"messages.[{index}].{field}",
    )


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    stop: Text | list[Text] | None = None
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    n: int = Field(1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        stops = value if isinstance(value, list) else [value]
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if "" in stops:
            raise ValueError("a stop sequence must not be empty")
        return value

    def params(self) -> GenerationParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens or 512,
            repetition_penalty=self.repetition_penalty,
            stop=stop,
        )


def create_router(
    registry: ModelRegistry, engine: InferenceEngine, api_key: str | None = None
) -> APIRouter:
    """The /v1 routes, to mount on any FastAPI app (the page's, or a bare one)."""
    router = APIRouter(prefix="/v1")

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key", "invalid_request_error")

    @router.get("/models")
    def list_models(request: Request):
        check_key(request)
        return model_list(registry)

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        chat = parse_request(await read_body(request))
        check_room(registry, chat)
        gone = threading.Event()  # set when the client disconnects: generation stops
        try:
            messages = [m.as_dict() for m in chat.messages]
            chunks = engine.stream(chat.model, messages, chat.params(), cancelled=gone)
            # the first chunk surfaces unknown or unavailable models before answering
            first = await run_in_threadpool(next, chunks)
        except ModelUnavailable as exc:
            raise APIError(409, exc.message, "model_unavailable", "model") from None
        except UnknownModel as exc:
            raise APIError(404, exc.message, "model_not_found", "model") from None
        except UnusableMessages as exc:
            raise APIError(400, exc.message, "invalid_request_error", "messages") from None
        except StudioError as exc:
            raise APIError(503, exc.message, "server_error") from None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if chat.stream:
            events = sse(completion_id, chat, first, chunks, gone)
            return StreamingResponse(events, media_type="text/event-stream")
        watcher = asyncio.create_task(_set_when_disconnected(request, gone))
        try:
            parts = [first, *(await run_in_threadpool(list, chunks))]
        finally:
            watcher.cancel()
            gone.set()
        return completion(completion_id, chat, parts)

    return router


def model_list(registry: ModelRegistry) -> dict:
    """GET /v1/models: every available model. Beyond OpenAI's schema (clients ignore extra
    fields): each model's display name, and which device answers."""
    created = int(time.time())
    data = [
        {
            "id": e.id,
            "object": "model",
            "created": created,
            "owned_by": "lora-studio",
            "name": e.display_name,
        }
        for e in registry.entries()
        if e.available
    ]
    return {"object": "list", "data": data, "device": device.describe()}


async def _set_when_disconnected(request: Request, gone: threading.Event) -> None:
    """Once the body is read, the next ASGI message is the client's disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


def check_room(registry: ModelRegistry, chat: ChatRequest) -> None:
    """max_tokens may not exceed the model's context length (400 names both)."""
    asked = chat.max_completion_tokens or chat.max_tokens
    try:
        entry = registry.get(chat.model)
    except StudioError:
        return  # an unknown model: answered with 404 where the engine is asked
    limit = context_length(base_path(entry)) if asked and entry.available else None
    if limit and asked > limit:
        raise APIError(
            400,
            f"max_tokens = {asked} is more than the context length of {chat.model} ({limit})",
            "invalid_request_error",
            "max_tokens",
        )


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES (announced or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BODY_BYTES:
            raise APIError(
                413, f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error"
            )
    return bytes(body)


def parse_request(body: bytes) -> ChatRequest:
    """The request, or a 400 naming what is wrong. The body is untrusted at every level:
    bytes that are not UTF-8, JSON the parser itself cannot take (nesting past its recursion
    limit, integers past Python's digit limit), and fields present but unusable."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start}"
        raise APIError(400, f"the body is not UTF-8 ({where})", "invalid_request_error") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else "nested too deeply"
        raise APIError(
            400, f"the body is not valid JSON: {reason}", "invalid_request_error"
        ) from None
    try:
        chat = ChatRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"])
        message = f"{param}: {error['msg']}" if param else error["msg"]
        raise APIError(400, message, "invalid_request_error", param or None) from None
    check_messages(chat.messages)
    return chat


def completion(completion_id: str, chat: ChatRequest, parts: list[Chunk]) -> dict:
    """A non-streamed reply in OpenAI's ``chat.completion`` shape."""
    last = parts[-1]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(p.text for p in parts)},
                "finish_reason": last.finish_reason,
            }
        ],
        "usage": usage(last),
    }


def usage(chunk: Chunk) -> dict:
    return {
        "prompt_tokens": chunk.prompt_tokens,
        "completion_tokens": chunk.completion_tokens,
        "total_tokens": chunk.prompt_tokens + chunk.completion_tokens,
    }


async def sse(
    completion_id: str,
    chat: ChatRequest,
    first: Chunk,
    rest: Iterator[Chunk],
    gone: threading.Event,
):
    """Server-sent events in OpenAI's chunk shape, ending with ``data: [DONE]``. When the
    client disconnects, the server cancels this generator: ``gone`` stops the generation."""
    created = int(time.time())

    def event(choices: list, **extra) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    def delta(content: dict, finish: str | None = None) -> str:
        return event([{"index": 0, "delta": content, "finish_reason": finish}])

    try:
        yield delta({"role": "assistant", "content": ""})
        last = chunk = first
        while chunk is not None:
            last = chunk
            if chunk.text:
                yield delta({"content": chunk.text})
            chunk = await run_in_threadpool(next, rest, None)
        yield delta({}, last.finish_reason)
        if chat.stream_options and chat.stream_options.include_usage:
            yield event([], usage=usage(last))
        yield "data: [DONE]\n\n"
    except StudioError as exc:
        yield f"data: {json.dumps({'error': {'message': exc.message, 'type': 'server_error'}})}\n\n"
    finally:
        gone.set()


def create_app(
    registry: ModelRegistry, engine: InferenceEngine, api_key: str | None = None
) -> FastAPI:
    """A FastAPI app serving the API alone (``lora-studio serve``); the page mounts on it too."""
    app = FastAPI(title="LoRA Studio", docs_url=None, redoc_url=None)
    app.include_router(create_router(registry, engine, api_key))
    app.add_exception_handler(APIError, lambda request, exc: exc.response())

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return APIError(404, f"no route {request.url.path}", "invalid_request_error").response()

    return app
