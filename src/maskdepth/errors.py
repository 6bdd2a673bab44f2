"""The one exception type for bad input: its message is a single line the CLI prints as is."""


class UserError(Exception):
    """Bad input or a refused action. The message names the file, what is wrong and what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
