"""The errors the project store and the document index raise for a caller's mistake: a module of their own
below both, so that extraction, the index and the store can all raise them without importing each other."""

from __future__ import annotations

from typing import Optional


class ProjectError(Exception):
    """Base of every error the store raises for a caller's mistake; `code` is the API error code."""

    code = "project_error"
    status: Optional[int] = None  # the HTTP status, where the kind of error does not say it (errors.project_error)

    def __init__(self, message: str, *, code: Optional[str] = None, param: Optional[str] = None,
                 status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.param = param
        if status is not None:
            self.status = status


class ProjectNotFound(ProjectError):
    code = "project_not_found"


class SessionNotFound(ProjectNotFound):
    code = "session_not_found"


class ProjectConflict(ProjectError):
    code = "project_conflict"


class ProjectInvalid(ProjectError):
    """A value the models refuse; `param` names the field (e.g. "params.temperature")."""

    code = "invalid_value"
