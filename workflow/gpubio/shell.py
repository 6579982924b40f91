"""Config values as shell words for the rules' commands.

Snakemake pastes params into a shell command as they are. Everything a user writes (paths,
names, extra tool options) goes through here or through `{x:q}`, so a value is always
data, never a command: `my reads.fq` stays one argument, `$(...)`, backticks and `;` run
nothing. The quoting is visible as typed in `snakemake -n -p`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable


def quote_option(flag: str, value, *, joined: bool = False) -> str:
    """``flag value`` as quoted shell words, or "" when the value is unset ("" or None).

    joined: one word ``flag=value``, for values that may start with "-" (argparse would
    read a separate "-q 20" as an option of its own).
    """
    if value is None or value == "":
        return ""
    if joined:
        return shlex.quote(f"{flag}={value}")
    return shlex.join([flag, str(value)])


def quote_option_list(flag: str, values: Iterable) -> str:
    """``flag v1 v2 ...`` quoted, or "" for no values."""
    values = [str(v) for v in values]
    return shlex.join([flag, *values]) if values else ""


def quote_extra_options(text: str | None) -> str:
    """A free-form option string from config ("--min-qscore 9 --mm2-opts '-k 15'") split by
    shell-word rules and quoted again: the tool gets the words the user meant, and a `;` or
    `$(...)` in them is an ordinary character. `#` is an ordinary character too."""
    return shlex.join(shlex.split(text or ""))


def extra_options_problems(settings: dict, keys: Iterable[str], config_file: str) -> list[str]:
    """One line per option string under `settings` (dotted keys) that is not valid shell words."""
    problems = []
    for key in keys:
        node = settings
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not node:
            continue
        try:
            shlex.split(str(node))
        except ValueError as error:  # unbalanced quotes: shlex says "No closing quotation"
            problems.append(
                f"{config_file}: key '{key}' = {node!r} is not valid shell words ({error}); "
                "balance its quotes, or quote a value with spaces like --opt 'a b'"
            )
    return problems
