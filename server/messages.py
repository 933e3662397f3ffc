"""Client text messages (docs/protocol.md section 2): one pydantic model per type, the one place their fields are
checked before a handler sees them.

Strict on purpose: a number is a JSON number (never a string or a boolean: `true` is not 1), a string is a string, and
numbers have ranges, so no client value can reach a handler that cannot hold it (a 400-digit `ping.t` once raised
OverflowError inside a session). Unknown fields are ignored, so a newer client can add some.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdxs.params import GenerationParams
from server.protocol import PROTOCOL_VERSION, ClientMessage, ErrorCode, ProtocolError, clip, parse_text, quote

MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: any timestamp a page sends fits


class _ClientMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)


class Hello(_ClientMessage):
    version: int  # checked first, by `validate`: anything but the JSON integer 1 is unsupported_version (fatal)
    params: dict | None = None  # validated as GenerationParams by the connection (invalid_params, not fatal)
    output_format: Literal["jpeg", "webp", "png"] | None = None
    client: str | None = Field(None, max_length=64)


class Params(_ClientMessage):
    params: dict


class Ping(_ClientMessage):
    t: Annotated[float, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)] | None = None  # echoed as a float


class Bye(_ClientMessage):
    pass


class Control(_ClientMessage):
    pass


ClientText = Hello | Params | Ping | Bye | Control
MODELS: dict[ClientMessage, type[_ClientMessage]] = {
    ClientMessage.HELLO: Hello, ClientMessage.PARAMS: Params, ClientMessage.PING: Ping, ClientMessage.BYE: Bye,
    ClientMessage.CONTROL: Control,
}
assert set(MODELS) == set(ClientMessage), "every client message type needs a model"


def parse_client_text(text: str) -> ClientText:
    """A client text message as its model; raises ProtocolError (bad_json, unknown_type, bad_message,
    unsupported_version)."""
    return validate(*parse_text(text))


def validate(kind: ClientMessage, obj: dict) -> ClientText:
    """The message `obj` of type `kind` as its model. A hello's version is checked before anything else: a client
    of another version may well send other fields, and must learn that it speaks the wrong protocol."""
    version = obj.get("version")
    if kind is ClientMessage.HELLO and not (type(version) is int and version == PROTOCOL_VERSION):  # True is no 1
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {quote(version)} is not supported; "
                            f"this server speaks {PROTOCOL_VERSION}", field="version")
    try:
        return cast(ClientText, MODELS[kind].model_validate(obj))
    except ValidationError as exc:
        field, why = _first_error(exc)
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{kind.value}.{why}", field=field) from None


def parse_params(current: GenerationParams, update: dict) -> GenerationParams:
    """`update` (a JSON object from the wire) merged into `current`; raises ProtocolError(INVALID_PARAMS).

    Validated from JSON in strict mode, so `true` is no seed and `"0.5"` no strength, as for every other field."""
    merged = {**current.model_dump(mode="json"), **update}
    try:
        return GenerationParams.model_validate_json(json.dumps(merged), strict=True)
    except ValidationError as exc:
        field, why = _first_error(exc)
        raise ProtocolError(ErrorCode.INVALID_PARAMS, why, field=field) from None


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """(field, reason) of pydantic's first complaint: the top-level field, and pydantic's reason (which never quotes
    the input), prefixed by the field clipped so that a 200 KB field name cannot crowd the reason out."""
    first = exc.errors(include_url=False, include_input=False)[0]
    field = str(first["loc"][0]) if first["loc"] else "message"
    return field, f"{clip(field, 40)}: {first['msg']}"
