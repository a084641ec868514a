"""The one exception type users see: a single sentence naming the file and the fix."""


class NCAError(Exception):
    """An error the user can act on.

    The message is one sentence that names the file (or setting) at fault and what to do
    about it. The CLI prints it without a traceback and exits with code 1.
    """
