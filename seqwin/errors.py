"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Raised for user mistakes (missing path, bad option, bad input file).

    The CLI prints its message as one line and exits with code 2 instead of showing a traceback.
    """
