"""The request bodies the API takes (pydantic models; the OpenAPI schemas).

Every number in a body is finite and bounded: ``Infinity``, ``NaN`` and
``1e308`` (which Python's JSON reader takes) are refused with 422 and the
field's location, before anything is proposed. ``Finite`` is a float within
+-MAX_NUMBER, ``Int64`` an integer a command parameter can carry.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import HTTPException
from pydantic import BaseModel, Field

from hub.state import entries as e
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES

MAX_NUMBER: Final = 1e15  # past 2**53 a float no longer counts in ones
MAX_LIMIT_W: Final = 10_000_000.0  # 10 MW: no plug or meter on one device draws more

Finite = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class ParamSpecIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: str | int
    min: Finite = 0.0
    max: Finite = 0.0


class CapabilityIn(BaseModel):
    action: str = Field(min_length=1, max_length=64)
    params: list[ParamSpecIn] = []


class DeviceIn(BaseModel):
    device_id: str
    capabilities: list[CapabilityIn] | None = None  # None: a smart plug's
    limit_w: float | None = Field(default=None, ge=0, le=MAX_LIMIT_W, allow_inf_nan=False)
    owner: str = Field(default="", max_length=64)


class CommandIn(BaseModel):
    device: str
    action: str = Field(min_length=1, max_length=64)
    params: dict[str, bool | Int64 | Finite | str] = {}
    deadline_s: float | None = Field(default=None, gt=0, le=7 * 86_400, allow_inf_nan=False)
    approved: bool = False  # an operator's explicit approval (critical devices)
    # A client's own id makes retries safe: the same id is one command.
    command_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class NodeIn(BaseModel):
    raft: str


class ModelIn(BaseModel):
    manifest: str = Field(min_length=2, max_length=e.MAX_MODEL_MANIFEST)
    signature: str = Field(min_length=1, max_length=200)
    key_id: str = Field(min_length=1, max_length=64)


class ActivateIn(BaseModel):
    version: str = Field(min_length=1, max_length=64)


class AskIn(BaseModel):
    question: str = Field(min_length=1, max_length=500)


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserIn(BaseModel):
    role: str = Field(pattern="^(admin|operator|viewer)$")
    password: str | None = Field(default=None, max_length=1024)
    devices: list[str] = Field(default=[], max_length=10_000)


class BundleIn(BaseModel):
    manifest: str  # manifest.json's exact text (its sha256 names the bundle)
    files: dict[str, str]  # path -> base64 content


class ReleaseIn(BaseModel):
    """A firmware release: its signed manifest (hub/decide/registry.py
    ``release_manifest``), the Ed25519 signature (base64) and the key's id."""

    manifest: str = Field(min_length=2, max_length=512)
    signature: str = Field(min_length=1, max_length=200)
    key_id: str = Field(min_length=1, max_length=64)


def _kind(value: str | int) -> m.ParamKind:
    try:
        if isinstance(value, int):
            return m.ParamKind(value)
        return {k.name.lower(): k for k in m.ParamKind}[value.lower()]
    except (ValueError, KeyError):
        names = ", ".join(k.name.lower() for k in m.ParamKind)
        raise HTTPException(422, f"param kind {value!r}: expected one of {names}") from None


def capabilities_of(caps: list[CapabilityIn] | None) -> tuple[m.Capability, ...]:
    """The capabilities a device body declares (a smart plug's when it declares none)."""
    if caps is None:
        return PLUG_CAPABILITIES
    return tuple(
        m.Capability(
            c.action, tuple(m.ParamSpec(p.name, _kind(p.kind), p.min, p.max) for p in c.params)
        )
        for c in caps
    )


def role(name: str) -> e.Role:
    """The role a UserIn names (its pattern allows only the three)."""
    return e.Role[name.upper()]
