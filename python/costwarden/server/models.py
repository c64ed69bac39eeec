"""Request bodies of the HTTP API (SPEC §13): the SQL parameter names without ``p_``.

Strict: a wrong JSON type (a string or a float where an integer is due, a bool for a
number), an unknown field or a missing one is 422 naming the field, before anything
reaches the database; so is an integer out of its range (``ttl_seconds``, a bigint id
in a path). A budget limit no bigint holds is 400, as a negative one (SPEC §13), also
before anything is sent (costwarden._sql checks every integer parameter). Usage
objects are checked by the database itself (SPEC §0): their errors come back as CW004,
also 422 naming the argument."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .._sql import BIGINT_RANGE
from ..errors import CostwardenError

UsageValue = StrictInt | StrictFloat
Usage = dict[str, UsageValue]

#: The longest hold fn_cost_reserve grants (its p_ttl: positive, at most 7 days).
MAX_TTL_SECONDS = 7 * 24 * 3600

#: An id in a route's path that is a SQL bigint (an anomaly's): 422 naming it past that.
BigintPath = Annotated[int, Path(ge=BIGINT_RANGE[0], le=BIGINT_RANGE[1])]


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
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS)] | None = Field(
        default=None,
        description="hold lifetime in seconds, 1 to 604800 (7 days; default: the runtime "
        "setting default_ttl)",
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
        description="micro-USD (metric cost) or tokens, 0 to 2^63 - 1 (a bigint; outside "
        "that 400, as an unknown period); null removes the limit, 0 blocks"
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
    #: applied versions this service does not ship: the schema is newer than its code
    unknown_migrations: list[int]


class HTTPError(CostwardenError):
    """An HTTP error answer (status, message, offending field, SQLSTATE)."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, sqlstate: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.sqlstate = status, message, field, sqlstate
