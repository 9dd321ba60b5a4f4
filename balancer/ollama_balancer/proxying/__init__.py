"""The proxy's parts, one job each; :mod:`ollama_balancer.proxy` runs them in order.

* :mod:`.attempt` — :class:`Attempt`, one try of one request on one pod;
* :mod:`.router` — the routing call (the pure decision fed this process's state);
* :mod:`.claims` — slot leases: early and late binding, failover, the shielded release;
* :mod:`.waiting` — the request as the wait queue sees it;
* :mod:`.headers` — the headers that cross the proxy each way;
* :mod:`.relay` — the bytes of an answer to the client, and how it ended;
* :mod:`.lessons` — what a complete answer taught (times, token estimates);
* :mod:`.autopull` — one pull per (pod, model), however many requests wait for it.
"""
