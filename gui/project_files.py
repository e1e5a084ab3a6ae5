"""Where projects live: recent projects (QSettings), the default folder for new projects and the
demo (platformdirs), and a free file name for a project made from a folder."""

from __future__ import annotations

import re
from pathlib import Path

import platformdirs
from PySide6.QtCore import QSettings

APP_NAME = "Sortlab"
ORG_NAME = "Sortlab"
RECENT_KEY = "recent_projects"
MAX_RECENT = 8
DEMO_FILE = "Demo.sortlab"


def default_projects_dir() -> Path:
    """Documents/Sortlab: where a non-programmer will look for their projects."""
    return Path(platformdirs.user_documents_dir()) / APP_NAME


def demo_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, ORG_NAME))


def recent_projects(settings: QSettings) -> list[str]:
    value = settings.value(RECENT_KEY, [])
    paths = [value] if isinstance(value, str) else list(value or [])
    return [p for p in paths if Path(p).exists()]


def remember_project(settings: QSettings, path: Path) -> list[str]:
    path_text = str(Path(path).resolve())
    paths = [path_text] + [p for p in recent_projects(settings) if p != path_text]
    settings.setValue(RECENT_KEY, paths[:MAX_RECENT])
    return paths[:MAX_RECENT]


def free_project_path(folder: Path, name: str) -> Path:
    """folder/name.sortlab, or name-2.sortlab, ... if taken; the name is made file-system safe."""
    stem = re.sub(r"[^\w\- .]+", "_", name).strip(" .") or "Project"
    candidate = folder / f"{stem}.sortlab"
    number = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{number}.sortlab"
        number += 1
    return candidate
