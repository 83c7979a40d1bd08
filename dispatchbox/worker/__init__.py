"""The worker: ``dispatchbox worker``'s supervisor and its processes.

Owns: starting and watching worker processes (``supervisor``), claiming events, running their
handlers on threads or an event loop, recording outcomes, keeping leases, listening for new
events and reaping expired leases (``process``, ``store``, ``threads``, ``lanes``, ``delivery``,
``outage``), the worker's settings (``config``) and loading the user's Dispatcher (``loader``).

Layer: services (docs/en/architecture.md). May import only downward: the domain
(``dispatcher``, ``delivery``, ``destinations``), the data layer and the base modules. Metrics
and alert hooks (``hooks.WorkerHooks``) come from above: one arrow still runs up, the
supervisor's load of ``dispatchbox.observability.worker_hooks``, listed in
tests/unit/test_layers.py until the hooks are passed in.
"""
