"""CLI: export, dataset export, predict --watch."""


def register(subparsers) -> None:
    """Adds no subcommands yet."""
