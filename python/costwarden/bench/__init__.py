"""costwarden's benchmark harness (`costwarden bench`, `make bench`).

Not part of the library: ``import costwarden`` never loads it; the ``bench``
command imports it when it runs. The pgbench workloads are in ``workloads/``
(see README.md); results and how to read them: docs/performance.md.

- :mod:`.common`: pgbench runner, percentiles, scratch databases, server facts;
- :mod:`.chain`: a long, real, verifiable ledger chain generated set-based in SQL;
- :mod:`.saga`: the saga figures, each beside a same-run baseline;
- :mod:`.ledger`: the ledger's costs (chain vs no chain, appends, verification).
"""
