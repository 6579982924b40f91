"""The one error a step reports as a single line: an input, a model or a sample it cannot use.

Each domain's own error (a FASTQ without reads, a matrix that is not counts, a truncated
TIFF, a checkpoint that does not fit) derives from it; `python -m gpubio` turns it into
`gpubio: <command>: <message>` and a non-zero exit, never a traceback. Light on purpose:
the CLI imports it before any step runs.
"""


class UnusableInput(ValueError):
    """An input, model or sample this step cannot use; the message names it and the fix."""
