"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class EdgediffError(Exception):
  """Bad input or a failed check, with a message that names the thing at fault."""


def first_line(e: Exception) -> str:
  """An exception's message cut to its first line (its type's name when it has none)."""
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
