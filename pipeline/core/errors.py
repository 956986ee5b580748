"""The base error every module raises for problems a user can fix.

    python -c "from pipeline.core.errors import PipelineError; print(PipelineError.__doc__)"

The CLI and the Prefect flow print such an error as one line (no traceback); anything
else that escapes is a bug and keeps its traceback.
"""


class PipelineError(RuntimeError):
    """A user-fixable failure; ``str(err)`` is one line naming the thing and the fix."""


class ConfigError(PipelineError, ValueError):
    """A configuration value, key or file that cannot be used; the message is one line."""
