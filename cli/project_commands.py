"""CLI: import, info, classes, label, demo (to be filled by the import/CLI work)."""


def register(subparsers) -> None:
    """Adds no subcommands yet."""
