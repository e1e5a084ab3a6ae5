"""Who may do what in a team project: PostgreSQL's own roles and grants, no login of Sortlab's own.

- viewer: reads everything but trained weights (so no export).
- labeler: a viewer who may also label: write ``labels`` and ``label_events``.
- owner: a member of the role that owns the project's tables, so everything: classes, importing,
  training, export, and migrating the schema (only a table's owner may alter it).

``grant(project, role, level)`` runs as the project's owner (or a superuser) and replaces whatever the
role could do before. The role is created (LOGIN, no password) when it does not exist; its password is
the database administrator's business (``ALTER ROLE ... PASSWORD`` or another authentication method),
never Sortlab's. ``access_level(project)`` tells a client what its own role may do (a file: owner).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from storage.errors import ProjectError
from storage.models import Base
from storage.project import Project

VIEWER, LABELER, OWNER = "viewer", "labeler", "owner"
LEVELS = (VIEWER, LABELER, OWNER)
LABEL_TABLES = ("labels", "label_events")
HIDDEN_FROM_VIEWERS = {"model_versions": {"weights"}}  # reading them is exporting the model


def _quote(project: Project, name: str) -> str:
    return project.engine.dialect.identifier_preparer.quote(name)


def grant(project: Project, role: str, level: str) -> list[str]:
    """Give ``role`` exactly ``level``'s rights on this team project; returns the statements run."""
    if not project.is_database:
        raise ProjectError("Roles exist only in team projects (a database URL); a project file is its owner's.")
    if level not in LEVELS:
        raise ProjectError(f"Unknown access level {level!r}: use one of {', '.join(LEVELS)}.")
    role = role.strip()
    if not role:
        raise ProjectError("Name the database role to grant access to.")
    who = _quote(project, role)
    try:
        return _grant(project, role, who, level)
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise ProjectError(f"Could not grant {level} rights to {role}: {reason}.") from exc


def _grant(project: Project, role: str, who: str, level: str) -> list[str]:
    statements: list[str] = []
    with project.engine.begin() as connection:
        owner = connection.execute(text("SELECT tableowner FROM pg_tables WHERE schemaname = current_schema() "
                                         "AND tablename = 'project_meta'")).scalar_one()
        if role == owner:
            raise ProjectError(f"{role} owns the project's tables already.")
        exists = connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": role}).scalar()
        if not exists:
            statements.append(f"CREATE ROLE {who} LOGIN")
        database = _quote(project, connection.execute(text("SELECT current_database()")).scalar_one())
        schema = _quote(project, connection.execute(text("SELECT current_schema()")).scalar_one())
        is_member = connection.execute(text("SELECT pg_has_role(:role, :owner, 'MEMBER')"),
                                       {"role": role, "owner": owner}).scalar() if exists else False
        if is_member and level != OWNER:
            statements.append(f"REVOKE {_quote(project, owner)} FROM {who}")
        statements += [
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {who}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {who}",
            f"GRANT CONNECT ON DATABASE {database} TO {who}",
            f"GRANT USAGE ON SCHEMA {schema} TO {who}",
        ]
        if level == OWNER:
            statements.append(f"GRANT {_quote(project, owner)} TO {who}")
        else:
            tables = [t for t in Base.metadata.tables.values() if t.name not in HIDDEN_FROM_VIEWERS]
            statements.append(f"GRANT SELECT ON {', '.join(_quote(project, t.name) for t in tables)}, "
                              f"{_quote(project, 'alembic_version')} TO {who}")
            for name, hidden in HIDDEN_FROM_VIEWERS.items():
                columns = [c.name for c in Base.metadata.tables[name].columns if c.name not in hidden]
                statements.append(f"GRANT SELECT ({', '.join(_quote(project, c) for c in columns)}) "
                                  f"ON {_quote(project, name)} TO {who}")
            if level == LABELER:
                statements.append(f"GRANT INSERT, UPDATE, DELETE ON {', '.join(LABEL_TABLES)} TO {who}")
                statements.append(f"GRANT USAGE ON SEQUENCE label_events_id_seq TO {who}")
        for statement in statements:
            connection.exec_driver_sql(statement)
    return statements


def access_level(project: Project) -> str:
    """What this client's role may do in the project: 'owner', 'labeler' or 'viewer'."""
    if not project.is_database:
        return OWNER
    with project.engine.connect() as connection:
        owner, can_label = connection.execute(text(
            "SELECT pg_has_role(current_user, (SELECT tableowner FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename = 'project_meta'), 'USAGE'), has_table_privilege('labels', 'INSERT')")).one()
    return OWNER if owner else LABELER if can_label else VIEWER
