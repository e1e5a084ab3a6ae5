"""CLI: extract (deep features)."""


def register(subparsers) -> None:
    """Adds no subcommands yet."""
