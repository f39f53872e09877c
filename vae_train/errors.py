"""The one exception type that reaches the user as a single line, not a traceback."""


class UserError(Exception):
    """Bad configuration, missing data, unusable device or checkpoint.

    The message must say what was wrong and how to fix it; the command line turns it into
    one line on stderr and a non-zero exit code.
    """
