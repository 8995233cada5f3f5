"""Projects: named workspaces (model, system prompt, generation defaults) with usage and history."""

from slp.projects.schema import (
    NAME_PATTERN,
    SESSION_ID_PATTERN,
    SYSTEM_PROJECT,
    Exchange,
    GenerationParams,
    Project,
    ProjectCreate,
    ProjectUpdate,
    ProjectUsage,
    SessionDetail,
    SessionSummary,
)
from slp.projects.shaping import shape_chat, shape_completion
from slp.projects.store import (
    ProjectConflict,
    ProjectError,
    ProjectInvalid,
    ProjectNotFound,
    ProjectStore,
    SessionNotFound,
    check_session_id,
    parse,
)

__all__ = [
    "NAME_PATTERN", "SESSION_ID_PATTERN", "SYSTEM_PROJECT", "Exchange", "GenerationParams", "Project",
    "ProjectCreate", "ProjectUpdate", "ProjectUsage", "SessionDetail", "SessionSummary", "shape_chat",
    "shape_completion", "ProjectConflict", "ProjectError", "ProjectInvalid", "ProjectNotFound", "ProjectStore",
    "SessionNotFound", "check_session_id", "parse",
]
