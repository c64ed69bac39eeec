"""Request bodies of the HTTP API (SPEC §13): the SQL parameter names without ``p_``.

Strict: a wrong JSON type (a string or a float where an integer is due, a bool for a
number), an unknown field or a missing one is 422 naming the field, before anything
reaches the database. Usage objects are checked by the database itself (SPEC §0):
their errors come back as CW004, also 422 naming the argument."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..errors import CostwardenError

UsageValue = StrictInt | StrictFloat
Usage = dict[str, UsageValue]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class QuoteRequest(Body):
    org_id: StrictStr
    workspace_id: StrictStr
    model: StrictStr
    usage: Usage = Field(description="usage units (SPEC §0): the maximum expected usage")


class ReserveRequest(QuoteRequest):
    user_id: StrictStr | None = None
    key_id: StrictStr | None = None
    idempotency_key: StrictStr | None = None
    ttl_seconds: StrictInt | None = Field(
        default=None, description="hold lifetime in seconds (default: the runtime setting)"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)


class MeterRequest(Body):
    usage: Usage = Field(description="cumulative usage so far")


class CommitRequest(Body):
    usage: Usage = Field(description="the actual usage")
    approximate: StrictBool = False


class ReleaseRequest(Body):
    reason: StrictStr | None = None


class BudgetPatch(Body):
    period: StrictStr = Field(description="hour | day | week | month")
    limit: StrictInt | None = Field(
        description="micro-USD (metric cost) or tokens; null removes the limit, 0 blocks"
    )
    metric: Literal["cost", "tokens"] = "cost"
    window: Literal["rolling", "calendar"] = "rolling"
    mode: Literal["enforce", "shadow"] = "enforce"


class ByokKeyPut(Body):
    secret: StrictStr = Field(description="the provider API key (stored encrypted)")


class Fingerprint(BaseModel):
    fingerprint: str


class Revoked(BaseModel):
    revoked: bool


class Released(BaseModel):
    released_micros: int


class ErrorBody(BaseModel):
    """Every error response (401, 403, 404, 409, 413, 422, 503)."""

    error: str = Field(description="not_authenticated, forbidden, not_found, invalid_state, ...")
    message: str
    field: str | None = Field(default=None, description="the offending field, when one is")
    sqlstate: str | None = None
    request_id: str


class Health(BaseModel):
    ok: bool
    database: bool
    schema_up_to_date: bool
    pending_migrations: list[str]
    outdated_functions: list[str]


class HTTPError(CostwardenError):
    """An HTTP error answer (status, message, offending field, SQLSTATE)."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, sqlstate: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.sqlstate = status, message, field, sqlstate
