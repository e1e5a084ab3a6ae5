"""User-facing errors of the storage layer: each message is one clear sentence for the user."""


class ProjectError(Exception):
    """Something is wrong with a project file; the message is meant for the user."""


class NotAProjectError(ProjectError):
    """The file is not a Sortlab project (not SQLite, or SQLite without our tables)."""


class NewerProjectError(ProjectError):
    """The project was written by a newer Sortlab whose format this version does not know."""


class ReadOnlyProjectError(ProjectError):
    """The project file or its folder cannot be written."""


class DiskFullError(ProjectError):
    """A write failed because the disk (or the file system holding the project) is full."""


class PermissionDeniedError(ProjectError):
    """The team project's database refused a change the user's role may not make."""
