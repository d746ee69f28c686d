"""The root of edgekit's one exception tree, shared by the agent and the central package.

    EdgekitError                  exit 1   anything edgekit raises on purpose
    ├── ConfigError               exit 2   a setting or flag has a bad value (names the field)
    ├── TemporaryError            exit 75  worth retrying later (network, broker, registry down)
    └── (area trees in edgekit.errors and edgekit_agent.*)

Every subclass carries ``exit_code`` so that a CLI maps an error to a distinct exit status
without a lookup table, and ``hint`` says what to do next. Adapters translate library errors
into this tree with ``raise ... from exc`` at the boundary.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Root of every error edgekit raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text


class ConfigError(EdgekitError):
    """A setting, flag or config file field has a value we cannot use."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        if field and not message.startswith(field):
            message = f"{field}: {message}"
        super().__init__(message, hint=hint)
        self.field = field


class TemporaryError(EdgekitError):
    """Something outside us failed in a way that may pass: retrying later can succeed."""

    exit_code = 75  # EX_TEMPFAIL

    def __init__(self, message: str, *, delay: float | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.delay = delay
