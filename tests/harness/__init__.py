"""The test harness: the real servers the tests run against, and the one way to wait for them.

Everything a test module shares with another lives here, never in a test module or a
``conftest.py`` (conftests only wire these into fixtures).  An import-linter contract in
``pyproject.toml`` keeps it so: no module under ``tests`` imports another, except from
``tests.harness``.

- :mod:`.eventually`: poll state that has no event to await, with a deadline and a message.
- :mod:`.fleet`: balancer apps in front of an emulated Ollama fleet (the :class:`~.fleet.Rig`);
  :mod:`.loop` (the loop they run on), :mod:`.scrape` (their ``/metrics``), :mod:`.auth`
  (a rig with API keys), :mod:`.leaks` (tasks, fds and counters after faults).
- :mod:`.memory_pods`: in-memory pods behind the transport's protocol, answering with
  responses fed chunk by chunk (the proxy's parts in isolation); :mod:`.rawhttp`: loopback
  servers answering with exact bytes (the transport's clients).
- :mod:`.emulator`: the emulator tests' small models and node factory type.
- :mod:`.routing_cases`: the routing table cases, checked by the balancer and shared suites.
- :mod:`.discovery`: a discovery loop run in a task, recording what it publishes.
- :mod:`.kube`: a real etcd + kube-apiserver (and controllers) on loopback.
- :mod:`.operator_env`: the operator in-process against that API server, with emulated pods.
- :mod:`.redis`: a real redis-server; :mod:`.replicas`: balancer processes behind nginx
  sharing state through it.
- :mod:`.chart`, :mod:`.promtool`, :mod:`.prometheus`, :mod:`.dashboard`, :mod:`.observed`:
  the Helm chart, Prometheus and the fleet it observes.
"""
