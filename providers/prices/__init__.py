"""Prices: the bundled GPU catalog, live refresh from the clouds' price APIs, and run estimates.

Standard library only at import time (the CLI's fast path). Each refresh module imports its
SDK (boto3 for AWS) when it runs; Azure and GCP use urllib.

- ``catalog``: the bundled catalog (``data/catalog.csv``, sources in ``data/SOURCES.md``) with
  the live-price cache in dqlctl's data dir laid over it.
- ``refresh``: live refresh, all or nothing per cloud; each cloud's ``fetch(rows, ...)`` lives in
  its own package (``providers.aws.prices``, ``providers.azure.prices``, ``providers.gcp.prices``),
  named in ``refresh.MODULES``.
- ``estimate``: the one estimate (``estimate``), offers cheapest first (``offers``),
  ``cheapest_offer`` for ``launch --provider auto``, and a run's accrued cost.
"""
