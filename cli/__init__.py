"""Sortlab's command-line interface: one module per group of subcommands.

Each module exposes ``register(subparsers)``, adding its subcommands with ``set_defaults(handler=...)``.
A handler takes the parsed args and returns a ``CommandResult`` (a JSON-able dict plus a human text).
"""
