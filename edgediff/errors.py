"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class EdgediffError(Exception):
  """Bad input or a failed check, with a message that names the thing at fault."""
