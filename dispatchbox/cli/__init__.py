"""The ``dispatchbox`` command (Typer): one module per command group.

Owns: parsing flags and environment, one clear line and a non-zero exit for bad input, and
assembling the pieces: ``serve`` builds the API app and mounts the console on it, ``worker``
builds the supervisor with its metrics and alert channels, ``archive`` and ``db`` call the
maintenance services and migrations.

Layer: assemble, the top one (docs/en/architecture.md). May import every package; nothing in
dispatchbox imports it (``dispatchbox.__main__`` runs it).
"""
