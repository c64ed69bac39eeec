"""The clients: :class:`Client` (sync) and :class:`AsyncClient`, one method per
costwarden function, with the same public methods and signatures (sync returns ``T``,
async ``Awaitable[T]``; ``reservation()`` and ``ledger_snapshot()`` are context
managers in both).

The async client (costwarden/aio.py) is the only hand-written source; the sync client
(costwarden/_client_sync.py) is generated from it by tools/async_to_sync.py, so the
two cannot drift. aio.py explains the choice; docs/python.md shows both in use.
"""

from __future__ import annotations

from ._client_sync import Client, ReservationHandle
from .aio import AsyncClient, AsyncReservationHandle

__all__ = ["AsyncClient", "AsyncReservationHandle", "Client", "ReservationHandle"]
