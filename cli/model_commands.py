"""CLI: extract, train, predict, models."""


def register(subparsers) -> None:
    """Adds no subcommands yet."""
