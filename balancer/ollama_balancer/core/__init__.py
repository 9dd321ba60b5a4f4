"""The balancer's pure core: values and decisions, no I/O.

Everything here is a function of its arguments (a request, the fleet snapshot, the
occupancy, the clock, a random generator) or a plain value: no aiohttp, redis, kopf,
kubernetes, structlog or prometheus_client (an import contract checks it).  The I/O shell
around it — the pipeline, the proxy and its parts, the pollers, the stores, the wait room —
lives one package up and calls in here.

* the fleet: ``fleet`` (the polled snapshot), ``occupancy`` (what only the balancer knows,
  as one immutable value), ``ledger`` (this replica's writer of it), ``fleetstate`` (the
  snapshot, the occupancy and the routable pods at one moment: what every decision reads),
  ``pods`` (pods → backends), ``backoff``;
* requests: ``requests`` (parsing), ``routes`` (the route table), ``record`` (one answer),
  ``errors`` (the error tree), ``auth`` (API keys and limits), ``tokens`` (cost estimates);
* decisions: ``rankers`` and ``routing`` (which pod), ``queueing`` and ``dispatch`` (who
  waits, who goes), ``unload`` (a fleet-wide unload);
* ``scheduling``: the scheduler that makes room (class shares with lending, fair share in
  slot-seconds, reclaim, admission estimates; docs/scheduling.md);
* answers made from the snapshot: ``listings`` (``/api/tags``, ``/api/ps``, ``/v1/models``),
  ``report`` (``/-/fleet``);
* ``shared``: the values, key names, scripts and local implementation behind the fleet-wide
  shared state (the Redis client itself is :mod:`ollama_balancer.shared`).
"""
