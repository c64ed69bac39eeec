"""Plain-text presentation shared by the command line, the demo, the bench and the
ledger report: one table printer, one USD formatter and the DSN as it may be shown.
No click, no I/O."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["safe_dsn", "table", "usd"]


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table, right-aligning columns that hold only numbers."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(rows)
        and all(
            (isinstance(r[i], int | float | Decimal) and not isinstance(r[i], bool)) or r[i] is None
            for r in rows
        )
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, sort_keys=True)
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def usd(micros: int | Decimal | None, places: int = 6) -> str:
    """Micro-USD as dollars, exactly (no float): 1234567 -> '$1.234567'."""
    if micros is None:
        return "-"
    dollars = Decimal(micros).scaleb(-6)
    return f"${dollars:,.{places}f}"


#: The connection parameters ``safe_dsn`` shows: where the database is and who logs in.
#: Every other one is left out, whether it carries a secret (password, sslpassword) or
#: not: a parameter added to libpq later cannot leak either.
SHOWN_DSN_KEYS = ("host", "hostaddr", "port", "user", "dbname")


def safe_dsn(dsn: str) -> str:
    """The DSN as commands print it: its host, port, user and database only."""
    info = conninfo_to_dict(dsn)
    return make_conninfo(
        "", **{k: v for k, v in info.items() if k in SHOWN_DSN_KEYS and v is not None}
    )
