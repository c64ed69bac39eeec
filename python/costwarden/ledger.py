"""The ledger outside the database (SPEC §4): export, digests, and a verifier that
recomputes every hash in Python.

Nothing here trusts the SQL implementation of the chain. Each entry's canonical
payload is rebuilt from the raw row by the encoders below, which follow
docs/ledger.md ("Canonical payload") and not sql/functions/07_ledger.sql, and hashed with
hashlib: ``entry_hash = sha256(prev_hash || payload)``, ``prev_hash`` of seq 1 = 32
zero bytes. Rows come from ``fn_ledger_export`` (read in one REPEATABLE READ
snapshot, together with the heads) or from a JSON Lines export file.

A digest (``costwarden ledger digest``) records each org's head (seq, entry_hash)
and which database it belongs to. Kept outside the database, it catches what no
check inside can: a rewrite of history that recomputed every later hash and the
head. ``verify`` requires each saved head to be present, unchanged, in the current
chain.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from . import types as t
from ._text import table
from .client import Client
from .errors import CostwardenError

PAYLOAD_HEADER = "costwarden-ledger-v1"
DIGEST_FORMAT = "costwarden-ledger-digest-v1"
ZERO_HASH = bytes(32)
ENTRY_TYPES = frozenset({"charge", "spend_report", "adjustment"})

#: The payload's fields in order, each with its encoding (docs/ledger.md).
FIELDS: tuple[tuple[str, str], ...] = (
    ("org_id", "text"),
    ("seq", "integer"),
    ("entry_type", "text"),
    ("reservation_id", "uuid"),
    ("workspace_id", "text"),
    ("user_id", "text"),
    ("key_id", "text"),
    ("model", "text"),
    ("billing_mode", "text"),
    ("usage", "usage"),
    ("tokens", "integer"),
    ("amount_micros", "integer"),
    ("pricing_snapshot_id", "nullable integer"),
    ("approximate", "boolean"),
    ("late", "boolean"),
    ("source", "text"),
    ("reason", "text"),
    ("created_at", "timestamp"),
)
#: The fields of one export line (a raw row): the payload's, then the two hashes.
EXPORT_FIELDS: tuple[str, ...] = (*(name for name, _ in FIELDS), "prev_hash", "entry_hash")

Progress = Callable[[int, int | None], None]


class LedgerFormatError(CostwardenError, ValueError):
    """A raw row (or export line) that cannot be read or canonicalised."""


class DigestError(CostwardenError, ValueError):
    """A digest file that is malformed, or that belongs to another database."""


# -- the canonical payload ---------------------------------------------------------------

_ESCAPE_RE = re.compile(r'[\x00-\x1f"\\]')
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return _ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def canon_text(value: Any) -> str:
    """A JSON string: ``"`` and ``\\`` escaped, \\b \\f \\n \\r \\t, other characters
    below U+0020 as \\u00XX (lowercase hex), everything else as is; None -> null."""
    if type(value) is str:
        if _ESCAPE_RE.search(value) is None:
            return '"' + value + '"'
        return '"' + _ESCAPE_RE.sub(_escape, value) + '"'
    if value is None:
        return "null"
    if not isinstance(value, str):
        raise LedgerFormatError(f"expected a string, got {type(value).__name__}")
    return '"' + _ESCAPE_RE.sub(_escape, value) + '"'


def canon_integer(value: Any, *, nullable: bool = False) -> str:
    if type(value) is int:
        return str(value)
    if value is None and nullable:
        return "null"
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerFormatError(f"expected an integer, got {value!r}")
    return str(value)


def canon_boolean(value: Any) -> str:
    if not isinstance(value, bool):
        raise LedgerFormatError(f"expected true or false, got {value!r}")
    return "true" if value else "false"


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canon_uuid(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and _UUID_RE.fullmatch(value):
        return f'"{value}"'  # already the lowercase hyphenated form
    try:
        parsed = value if isinstance(value, UUID) else UUID(str(value))
    except ValueError as exc:
        raise LedgerFormatError(f"not a uuid: {value!r}") from exc
    return f'"{parsed}"'


def canon_number(value: Any) -> str:
    """A JSON number: decimal digits, no exponent, no trailing fractional zeros (as
    PostgreSQL's trim_scale(numeric) prints it)."""
    if type(value) is int:
        return str(value)
    if isinstance(value, bool):
        raise LedgerFormatError(f"expected a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise LedgerFormatError(f"expected an exact number, got {value!r}")
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def canon_usage(value: Any) -> str:
    """null, or a JSON object of numbers: keys in UTF-8 byte order, no spaces."""
    if value is None:
        return "null"
    if not isinstance(value, Mapping):
        raise LedgerFormatError(f"usage must be an object, got {type(value).__name__}")
    if not all(isinstance(key, str) for key in value):
        raise LedgerFormatError("usage keys must be strings")
    # Python orders str by code point, which is the UTF-8 byte order
    return "{" + ",".join(canon_text(k) + ":" + canon_number(value[k]) for k in sorted(value)) + "}"


def parse_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise LedgerFormatError(f"not an ISO 8601 timestamp: {value!r}") from exc
    else:
        raise LedgerFormatError(f"expected a timestamp, got {value!r}")
    if parsed.tzinfo is None:
        raise LedgerFormatError(f"timestamp without a time zone: {value!r}")
    return parsed.astimezone(UTC)


_CANON_TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def canon_timestamp(value: Any) -> str:
    """A JSON string ``"YYYY-MM-DDTHH:MM:SS.ffffffZ"`` in UTC."""
    if isinstance(value, str) and _CANON_TS_RE.fullmatch(value):
        return f'"{value}"'  # already written the canonical way
    d = parse_timestamp(value)
    return (
        f'"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}'
        f'.{d.microsecond:06d}Z"'
    )


_ENCODERS: dict[str, Callable[[Any], str]] = {
    "text": canon_text,
    "integer": canon_integer,
    "nullable integer": lambda v: canon_integer(v, nullable=True),
    "uuid": canon_uuid,
    "boolean": canon_boolean,
    "usage": canon_usage,
    "timestamp": canon_timestamp,
}


_FIELD_ENCODERS = tuple((name, name + "=", _ENCODERS[kind]) for name, kind in FIELDS)


def canonical_payload(row: Mapping[str, Any]) -> bytes:
    """The UTF-8 bytes that are hashed for one entry (docs/ledger.md)."""
    try:
        # straight-line for speed (a verification reads millions of rows); the same
        # fields and encoders as FIELDS, checked by a test
        text = (
            "costwarden-ledger-v1\norg_id="
            + canon_text(row["org_id"])
            + "\nseq="
            + canon_integer(row["seq"])
            + "\nentry_type="
            + canon_text(row["entry_type"])
            + "\nreservation_id="
            + canon_uuid(row["reservation_id"])
            + "\nworkspace_id="
            + canon_text(row["workspace_id"])
            + "\nuser_id="
            + canon_text(row["user_id"])
            + "\nkey_id="
            + canon_text(row["key_id"])
            + "\nmodel="
            + canon_text(row["model"])
            + "\nbilling_mode="
            + canon_text(row["billing_mode"])
            + "\nusage="
            + canon_usage(row["usage"])
            + "\ntokens="
            + canon_integer(row["tokens"])
            + "\namount_micros="
            + canon_integer(row["amount_micros"])
            + "\npricing_snapshot_id="
            + canon_integer(row["pricing_snapshot_id"], nullable=True)
            + "\napproximate="
            + canon_boolean(row["approximate"])
            + "\nlate="
            + canon_boolean(row["late"])
            + "\nsource="
            + canon_text(row["source"])
            + "\nreason="
            + canon_text(row["reason"])
            + "\ncreated_at="
            + canon_timestamp(row["created_at"])
            + "\n"
        )
        return text.encode("utf-8")
    except (KeyError, LedgerFormatError, ValueError):  # UnicodeEncodeError is a ValueError
        return _canonical_payload_slowly(row)  # raises, naming the field


def _canonical_payload_slowly(row: Mapping[str, Any]) -> bytes:
    """canonical_payload, one field at a time, naming the field that fails."""
    parts = [PAYLOAD_HEADER]
    for name, prefix, encode in _FIELD_ENCODERS:
        if name not in row:
            raise LedgerFormatError(f"field {name} is missing")
        try:
            part = prefix + encode(row[name])
            part.encode("utf-8")  # a lone surrogate has no UTF-8 form
        except (LedgerFormatError, ValueError) as exc:
            raise LedgerFormatError(f"{name}: {exc}") from None
        parts.append(part)
    parts.append("")
    return "\n".join(parts).encode("utf-8")


def compute_hash(prev_hash: bytes, row: Mapping[str, Any]) -> bytes:
    """sha256(prev_hash || canonical payload)."""
    return hashlib.sha256(prev_hash + canonical_payload(row)).digest()


def _hex32(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX64_RE.fullmatch(value):
        raise LedgerFormatError(f"{name} is not 32 bytes in lowercase hex")
    return bytes.fromhex(value)


# -- raw rows and JSON Lines ----------------------------------------------------------------


def entry_to_raw(entry: t.LedgerEntry) -> dict[str, Any]:
    """A fn_ledger_export row as the plain JSON-able dict an export line holds."""
    raw = dict(entry.__dict__)
    if raw["reservation_id"] is not None:
        raw["reservation_id"] = str(raw["reservation_id"])
    return raw


def _json(value: Any) -> str:
    """JSON with exact numbers (Decimals as written, never floats), ASCII only."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise LedgerFormatError(f"not a finite number: {value}")
        return format(value, "f")
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(v) for v in value) + "]"
    raise LedgerFormatError(f"cannot write {type(value).__name__} as JSON")


_BEFORE_USAGE = EXPORT_FIELDS[: EXPORT_FIELDS.index("usage")]
_AFTER_USAGE = EXPORT_FIELDS[EXPORT_FIELDS.index("usage") + 1 :]
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def dumps_row(raw: Mapping[str, Any]) -> str:
    """One export line (without the newline): the fields in EXPORT_FIELDS order, ASCII,
    numbers exact (the usage is written by _json; the rest has no Decimals)."""
    try:
        before = _DUMPS({k: raw.get(k) for k in _BEFORE_USAGE})
        after = _DUMPS({k: raw.get(k) for k in _AFTER_USAGE})
    except TypeError:  # not plain JSON values: the careful way
        return "{" + ",".join(f'"{k}":{_json(raw.get(k))}' for k in EXPORT_FIELDS) + "}"
    return before[:-1] + ',"usage":' + _json(raw.get("usage")) + "," + after[1:]


def _no_constant(name: str) -> Any:
    raise LedgerFormatError(f"{name} is not a number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a line that names a field twice could
    be read one way by a person or a tool and verified another way."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise LedgerFormatError(f"field {key} appears twice")
            seen.add(key)
    return out


_DECODER = json.JSONDecoder(
    parse_float=Decimal, parse_constant=_no_constant, object_pairs_hook=_object
)
_EXPORT_KEYS = frozenset(EXPORT_FIELDS)


def loads_row(line: str) -> dict[str, Any]:
    """Parse one export line; numbers stay exact (int or Decimal). A line is an object of
    the export's fields only, each once."""
    try:
        raw = _DECODER.decode(line)
    except json.JSONDecodeError as exc:
        raise LedgerFormatError(f"not JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of over 4 300 digits
        raise LedgerFormatError(f"not readable: {exc}") from None
    if not isinstance(raw, dict):
        raise LedgerFormatError("a line must be a JSON object")
    unknown = sorted(set(raw) - _EXPORT_KEYS)
    if unknown:
        raise LedgerFormatError(f"unknown field {unknown[0]}")
    return raw


def iter_export_file(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, raw row) for every non-blank line of a JSON Lines export."""
    with path.open(encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, loads_row(line)
            except LedgerFormatError as exc:
                raise LedgerFormatError(f"{path}:{number}: {exc}") from None


def iter_rows(
    client: Client, org_id: str | None = None, page_size: int = 10000
) -> Iterator[dict[str, Any]]:
    """Every raw row, in (org_id, seq) order, a keyset page at a time. Call it on a
    client from :meth:`Client.ledger_snapshot` so that the pages agree."""
    after_org: str | None = None
    after_seq = 0
    while True:
        page = client.ledger_export_dicts(org_id, after_org, after_seq, page_size)
        for raw in page:
            if raw["reservation_id"] is not None:
                raw["reservation_id"] = str(raw["reservation_id"])
            yield raw
        if len(page) < page_size:
            return
        after_org, after_seq = page[-1]["org_id"], page[-1]["seq"]


def export(
    client: Client,
    out: TextIO,
    org_id: str | None = None,
    *,
    page_size: int = 10000,
    progress: Progress | None = None,
    progress_every: int = 50_000,
) -> int:
    """Write every raw row as JSON Lines (one consistent snapshot); returns the count.
    ``progress(done, total)`` is called every ``progress_every`` rows and at the end."""
    n = 0
    with client.ledger_snapshot() as snap:
        total = sum(h.seq for h in snap.ledger_digest(org_id)) if progress is not None else None
        for raw in iter_rows(snap, org_id, page_size):
            out.write(dumps_row(raw) + "\n")
            n += 1
            if progress is not None and n % progress_every == 0:
                progress(n, total)
    if progress is not None:
        progress(n, total)
    return n


# -- digests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Digest:
    """Each org's head (seq, entry_hash in hex) at one moment, and whose they are."""

    system_identifier: str
    database_name: str
    taken_at: datetime
    heads: Mapping[str, tuple[int, str]]
    source: str | None = None  # the file it was read from

    def to_json(self) -> str:
        doc = {
            "format": DIGEST_FORMAT,
            "database": {
                "system_identifier": self.system_identifier,
                "database_name": self.database_name,
            },
            "taken_at": self.taken_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "chains": [
                {"org_id": org, "seq": seq, "entry_hash": h}
                for org, (seq, h) in sorted(self.heads.items())
            ],
        }
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"

    @property
    def label(self) -> str:
        when = self.taken_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{self.source or 'digest'} (taken {when})"

    def check_identity(self, identity: t.DatabaseIdentity) -> None:
        if (self.system_identifier, self.database_name) != (
            identity.system_identifier,
            identity.database_name,
        ):
            raise DigestError(
                f"{self.source or 'the digest'} belongs to database {self.database_name!r} "
                f"(system {self.system_identifier}), not to this one, {identity.database_name!r} "
                f"(system {identity.system_identifier})"
            )


def take_digest(client: Client, org_id: str | None = None) -> Digest:
    """The current head of every org's chain (or one org's)."""
    with client.ledger_snapshot() as snap:
        identity = snap.ledger_identity()
        heads = snap.ledger_digest(org_id)
    taken = heads[0].taken_at if heads else datetime.now(UTC)
    return Digest(
        system_identifier=identity.system_identifier,
        database_name=identity.database_name,
        taken_at=taken,
        heads={h.org_id: (h.seq, h.entry_hash) for h in heads},
    )


def write_digest(digest: Digest, path: Path) -> None:
    path.write_text(digest.to_json(), encoding="utf-8")


def read_digest(path: Path) -> Digest:
    """Read and validate a digest file; DigestError says what is wrong with it."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DigestError(f"{path}: cannot read the digest: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DigestError(f"{path}: not a digest (not JSON: {exc.msg})") from None

    def bad(why: str) -> DigestError:
        return DigestError(f"{path}: malformed digest: {why}")

    if not isinstance(doc, dict) or doc.get("format") != DIGEST_FORMAT:
        raise bad(f'"format" must be "{DIGEST_FORMAT}"')
    database = doc.get("database")
    if not isinstance(database, dict) or not all(
        isinstance(database.get(k), str) and database.get(k)
        for k in ("system_identifier", "database_name")
    ):
        raise bad('"database" must hold "system_identifier" and "database_name"')
    try:
        taken_at = parse_timestamp(doc.get("taken_at"))
    except LedgerFormatError as exc:
        raise bad(f'"taken_at": {exc}') from None
    chains = doc.get("chains")
    if not isinstance(chains, list):
        raise bad('"chains" must be a list')
    heads: dict[str, tuple[int, str]] = {}
    for i, chain in enumerate(chains):
        if not isinstance(chain, dict):
            raise bad(f"chains[{i}] must be an object")
        org, seq, h = chain.get("org_id"), chain.get("seq"), chain.get("entry_hash")
        if not isinstance(org, str) or not org:
            raise bad(f"chains[{i}].org_id must be a non-empty string")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise bad(f"chains[{i}].seq must be an integer >= 0")
        if not isinstance(h, str) or not _HEX64_RE.fullmatch(h):
            raise bad(f"chains[{i}].entry_hash must be 64 lowercase hex digits")
        if org in heads:
            raise bad(f"org {org!r} appears twice")
        heads[org] = (seq, h)
    return Digest(
        system_identifier=database["system_identifier"],
        database_name=database["database_name"],
        taken_at=taken_at,
        heads=heads,
        source=str(path),
    )


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainResult:
    """One org's chain as the Python verifier found it (same shape as fn_ledger_verify)."""

    org_id: str
    entries: int
    first_bad_seq: int | None
    detail: str | None
    last_seq: int
    last_hash: str

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


@dataclass
class _Chain:
    org_id: str
    entries: int = 0
    expected: int = 1  # the next seq in order
    prev: bytes = ZERO_HASH  # the stored entry_hash of the previous entry
    last_seq: int = 0
    last_hash: str = ZERO_HASH.hex()
    bad: tuple[int, str] | None = None
    missing: int | None = None  # a seq found missing: if it turns up later, out of order
    missing_after: int = 0
    hashes: dict[int, str] = field(default_factory=dict)  # at the seqs digests pinned


class ChainVerifier:
    """Feed raw rows in export order (per org, by seq), then ask for the results.

    Checks, per entry and in this order (the first failure of an org is kept): seq is
    the next one (gap, duplicate or out of order otherwise), prev_hash is the previous
    entry's entry_hash (32 zero bytes for seq 1), the payload can be built, and
    entry_hash = sha256(prev_hash || payload). Then, in :meth:`results`, the chain's end
    against the heads the database records (when given), and every digest's head
    against the chain.
    """

    def __init__(self, digests: Sequence[Digest] = (), org_id: str | None = None) -> None:
        self.org_id = org_id
        self.digests = list(digests)
        self._chains: dict[str, _Chain] = {}
        self._pinned: dict[str, set[int]] = {}
        for d in self.digests:
            for org, (seq, _h) in d.heads.items():
                self._pinned.setdefault(org, set()).add(seq)
        self.rows = 0

    def _chain(self, org_id: str) -> _Chain:
        chain = self._chains.get(org_id)
        if chain is None:
            chain = self._chains[org_id] = _Chain(org_id)
        return chain

    def add(self, raw: Mapping[str, Any]) -> None:
        org_id, seq = raw.get("org_id"), raw.get("seq")
        if not isinstance(org_id, str):
            raise LedgerFormatError("org_id must be a string")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise LedgerFormatError(f"org {org_id!r}: seq must be an integer")
        if self.org_id is not None and org_id != self.org_id:
            return
        self.rows += 1
        c = self._chain(org_id)
        c.entries += 1
        if seq in self._pinned.get(org_id, ()):
            c.hashes.setdefault(seq, str(raw.get("entry_hash")))
        if c.missing is not None and seq == c.missing:
            c.bad = (seq, f"entries out of order: seq {seq} comes after seq {c.missing_after}")
            c.missing = None
        if c.bad is not None:
            return
        if seq != c.expected:
            if seq > c.expected:
                c.bad = (
                    c.expected,
                    f"seq {c.expected} is missing: the entry after seq {c.expected - 1} "
                    f"has seq {seq}",
                )
                c.missing, c.missing_after = c.expected, seq
            else:
                c.bad = (seq, f"seq {seq} appears more than once or out of order")
            return
        try:
            prev = _hex32(raw.get("prev_hash"), "prev_hash")
            stored = _hex32(raw.get("entry_hash"), "entry_hash")
        except LedgerFormatError as exc:
            c.bad = (seq, f"seq {seq}: {exc}")
            return
        if prev != c.prev:
            c.bad = (
                seq,
                "prev_hash of seq 1 is not 32 zero bytes"
                if seq == 1
                else f"prev_hash of seq {seq} does not match the entry_hash of seq {seq - 1} "
                "(broken link)",
            )
            return
        try:
            computed = compute_hash(prev, raw)
        except LedgerFormatError as exc:
            c.bad = (seq, f"seq {seq} cannot be canonicalised: {exc}")
            return
        if computed != stored:
            c.bad = (
                seq,
                f"entry_hash of seq {seq} does not match sha256(prev_hash || payload): "
                "the entry was altered",
            )
            return
        amount = raw.get("amount_micros")
        if raw.get("entry_type") != "adjustment" and isinstance(amount, int) and amount < 0:
            c.bad = (
                seq,
                f"seq {seq} is a {raw.get('entry_type')} with a negative amount_micros: "
                "only adjustments are signed",
            )
            return
        c.prev = stored
        c.expected += 1
        c.last_seq, c.last_hash = seq, stored.hex()

    def results(self, heads: Mapping[str, tuple[int, str]] | None = None) -> list[ChainResult]:
        """One result per org. ``heads``: the database's record of each chain's end (from
        the same snapshot as the rows); None when verifying an export file alone."""
        orgs = set(self._chains)
        if heads is not None:
            orgs |= {o for o, (s, _h) in heads.items() if s > 0}
        for d in self.digests:
            orgs |= {o for o, (s, _h) in d.heads.items() if s > 0}
        if self.org_id is not None:
            orgs &= {self.org_id}
        return [self._result(self._chain(org), heads) for org in sorted(orgs)]

    def _result(self, c: _Chain, heads: Mapping[str, tuple[int, str]] | None) -> ChainResult:
        found: list[tuple[int, int, str]] = []  # (seq, rank, detail): lowest seq wins
        if c.bad is not None:
            found.append((c.bad[0], 0, c.bad[1]))
        elif heads is not None:
            head = heads.get(c.org_id)
            head_seq, head_hash = head if head is not None else (0, ZERO_HASH.hex())
            if head_seq < c.last_seq:
                found.append(
                    (
                        head_seq + 1,
                        1,
                        f"entries beyond the recorded head: the head is seq {head_seq}, "
                        f"the chain ends at seq {c.last_seq}"
                        if head is not None
                        else f"no head record for a chain of {c.last_seq} entries",
                    )
                )
            elif head_seq > c.last_seq:
                found.append(
                    (
                        c.last_seq + 1,
                        1,
                        f"entries missing at the end: the head is seq {head_seq}, "
                        f"the chain ends at seq {c.last_seq}",
                    )
                )
            elif head_hash != c.last_hash:
                found.append(
                    (
                        c.last_seq,
                        1,
                        f"the head's hash does not match the entry_hash of seq {c.last_seq}",
                    )
                )
        for d in self.digests:
            pinned = d.heads.get(c.org_id)
            if pinned is None or pinned[0] == 0:
                continue
            seq, h = pinned
            have = c.hashes.get(seq)
            if have is None:
                found.append(
                    (
                        c.last_seq + 1,
                        2,
                        f"the digest {d.label} recorded seq {seq}, but the chain has "
                        f"{c.entries} entries: entries were removed",
                    )
                )
            elif have != h:
                found.append(
                    (
                        seq,
                        2,
                        f"entry_hash of seq {seq} differs from the digest {d.label}: "
                        f"history up to seq {seq} was rewritten",
                    )
                )
        first = min(found) if found else None
        return ChainResult(
            org_id=c.org_id,
            entries=c.entries,
            first_bad_seq=first[0] if first else None,
            detail=first[2] if first else None,
            last_seq=c.last_seq,
            last_hash=c.last_hash,
        )


@dataclass(frozen=True)
class VerifyReport:
    chains: list[ChainResult]
    rows: int
    seconds: float
    digests: list[Digest]
    identity: t.DatabaseIdentity | None = None  # None: verified from an export file

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains)

    @property
    def failed(self) -> list[ChainResult]:
        return [c for c in self.chains if not c.ok]


def _feed(
    verifier: ChainVerifier,
    rows: Iterable[dict[str, Any]],
    progress: Progress | None,
    total: int | None,
    every: int,
) -> None:
    for n, raw in enumerate(rows, start=1):
        verifier.add(raw)
        if progress is not None and n % every == 0:
            progress(n, total)


def verify_database(
    client: Client,
    *,
    org_id: str | None = None,
    digests: Sequence[Digest] = (),
    check_identity: bool = True,
    progress: Progress | None = None,
    progress_every: int = 50_000,
    page_size: int = 10000,
) -> VerifyReport:
    """Read every raw row and the heads in one snapshot and verify them in Python."""
    start = time.monotonic()
    verifier = ChainVerifier(digests, org_id)
    with client.ledger_snapshot() as snap:
        identity = snap.ledger_identity()
        if check_identity:
            for d in digests:
                d.check_identity(identity)
        heads = {h.org_id: (h.seq, h.entry_hash) for h in snap.ledger_digest(org_id)}
        total = sum(seq for seq, _h in heads.values())
        _feed(verifier, iter_rows(snap, org_id, page_size), progress, total, progress_every)
    if progress is not None:
        progress(verifier.rows, total)
    return VerifyReport(
        chains=verifier.results(heads),
        rows=verifier.rows,
        seconds=time.monotonic() - start,
        digests=list(digests),
        identity=identity,
    )


def verify_export_file(
    path: Path,
    *,
    org_id: str | None = None,
    digests: Sequence[Digest] = (),
    progress: Progress | None = None,
    progress_every: int = 50_000,
) -> VerifyReport:
    """Verify a JSON Lines export (no database needed). Without the database's heads,
    entries appended past the end of a chain are only caught by a digest taken later."""
    start = time.monotonic()
    verifier = ChainVerifier(digests, org_id)
    for n, (number, raw) in enumerate(iter_export_file(path), start=1):
        try:
            verifier.add(raw)
        except LedgerFormatError as exc:
            raise LedgerFormatError(f"{path}:{number}: {exc}") from None
        if progress is not None and n % progress_every == 0:
            progress(n, None)
    if progress is not None:
        progress(verifier.rows, None)
    return VerifyReport(
        chains=verifier.results(None),
        rows=verifier.rows,
        seconds=time.monotonic() - start,
        digests=list(digests),
    )


def format_report(report: VerifyReport) -> str:
    """The per-org table and a one-line verdict."""
    rows = [
        (c.org_id, c.entries, "ok" if c.ok else "FAILED", c.first_bad_seq, c.detail or "")
        for c in report.chains
    ]
    lines = [table(rows, ["org", "entries", "chain", "first bad seq", "detail"])]
    for d in report.digests:
        lines.append(f"checked against digest {d.label}: {len(d.heads)} chain head(s)")
    where = "an export file" if report.identity is None else "the database"
    took = f"{report.seconds:.2f} s"
    if report.seconds >= 0.5:
        took += f", {report.rows / report.seconds:,.0f} entries/s"
    n = len(report.chains)
    verdict = (
        f"ledger OK: {n} chain(s), {report.rows:,} entries"
        if report.ok
        else f"ledger verification FAILED: {len(report.failed)} of {n} chain(s) bad"
    )
    lines.append(f"{verdict} (every hash recomputed in Python from {where} in {took})")
    return "\n".join(lines)
