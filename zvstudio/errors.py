"""User-facing errors.

Every failure a user can cause (a bad file, a wrong setting, a full disk) is raised as a
`ZvsError` whose message says what is wrong and, where possible, what to do. The CLI prints
that message without a traceback; the GUI shows it in a dialog.
"""

from __future__ import annotations


class ZvsError(Exception):
    """An error with a message meant for the user.

    `code` classifies it for programs that react to it (the GUI offers the matching action):
    "error" (bad input in general), "out_of_memory", "disk_full" or "internal" (a bug).
    """

    def __init__(self, message: str, hint: str | None = None, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class MediaError(ZvsError):
    """A video or audio file cannot be read or written."""


class ProjectError(ZvsError):
    """A project file is missing, broken or invalid."""


class StageError(ZvsError):
    """A stage of a render failed at a known frame. Work finished before it stays cached, so
    rendering again after fixing the cause resumes there."""

    def __init__(
        self, stage: str, frame: int, cause: BaseException, last: int | None = None
    ) -> None:
        if isinstance(cause, ZvsError):
            detail, hint, code = cause.message, cause.hint, cause.code
        else:
            detail = f"{type(cause).__name__}: {cause}"
            hint = "this is a bug; run again with --debug and report the traceback"
            code = "internal"
        what = {"keys": "rendering key frame", "propagate": "propagating frame"}.get(
            stage, f"{stage} at frame"
        )
        where = f"{what}s {frame}..{last}" if last not in (None, frame) else f"{what} {frame}"
        super().__init__(f"{where} failed: {detail}", hint, code)
        self.stage = stage
        self.frame = frame
        self.cause = cause


class RenderCancelled(Exception):
    """The user cancelled the running work; finished results are kept."""
