"""The one error the model layer raises for anything a user can act on."""


class ModelError(Exception):
    """A user-facing model problem; its message is one readable line, shown without a traceback."""
