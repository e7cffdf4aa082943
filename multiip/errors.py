"""The one error type users see: the CLI prints its message as one line and exits non-zero."""


class MultiipError(Exception):
    """Something the user can act on. ``str(err)`` is the whole message, one line, no traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code
