"""User-facing errors.

Every failure a user can cause (a bad file, a wrong setting, a full disk) is raised as a
`ZvsError` whose message says what is wrong and, where possible, what to do. The CLI prints
that message without a traceback; the GUI shows it in a dialog.
"""

from __future__ import annotations


class ZvsError(Exception):
    """An error with a message meant for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class MediaError(ZvsError):
    """A video or audio file cannot be read or written."""


class ProjectError(ZvsError):
    """A project file is missing, broken or invalid."""


class RenderCancelled(Exception):
    """The user cancelled the running work; finished results are kept."""
