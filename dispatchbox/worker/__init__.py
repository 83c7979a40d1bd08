"""The worker: ``dispatchbox worker``'s supervisor and its processes.

Owns: starting and watching worker processes (``supervisor``) and, in each process, a unit a
step of an event's trip: claiming (``claimer``, ``claim_position``), running handlers on threads
or an event loop (``handlers``, ``threads``, ``lanes``), turning results into outcomes and
writing them (``outcomes``, ``flusher``), keeping leases (``leases``), waking on new events
(``listener``), routed deliveries (``delivery``, ``outage``); ``process`` wires them. Also the
worker's settings (``config``) and loading the user's Dispatcher (``loader``).

Layer: services (docs/en/architecture.md). May import only downward: the domain
(``dispatcher``, ``delivery``, ``destinations``), the data layer (``dispatchbox.data.worker``
holds its statements), the base modules, and ``maintenance.reaper`` (a service of the same layer
that each process runs). Metrics and alert hooks (``hooks.WorkerHooks``) are built by the layer
that assembles the worker (the CLI) and passed in.
"""
