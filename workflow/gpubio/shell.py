"""Config values as shell words for the rules' commands.

Snakemake pastes params into a shell command as they are. Everything a user writes (paths,
names, extra tool options) goes through here or through `{x:q}`, so a value is always
data, never a command: `my reads.fq` stays one argument, `$(...)`, backticks and `;` run
nothing. The quoting is visible as typed in `snakemake -n -p`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Flag:
    """How one setting becomes command-line words, for a step's table of key -> flag.

    each: a list gives the flag before every item (``--file a --file b``), not ``--file a b``.
    negatable: false gives ``--no-<flag>``; else a false switch gives nothing.
    """

    name: str
    each: bool = False
    negatable: bool = True

    def words(self, value) -> list[str]:
        if value is None or value == "" or value == []:
            return []  # unset: the command's own default
        if isinstance(value, bool):
            if value:
                return [self.name]
            return ["--no-" + self.name.removeprefix("--")] if self.negatable else []
        if isinstance(value, (list, tuple)):
            items = [_word(v) for v in value]
            return [w for item in items for w in (self.name, item)] if self.each else [self.name, *items]
        return [self.name, _word(value)]


def _word(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_options(settings: Mapping, flags: Mapping[str, str | Flag]) -> str:
    """A step's settings as quoted command-line options, the one way every domain builds them.

    flags: the step's table, setting key (dotted for nested sections) -> flag ("--tile-size"
    or a Flag); keys absent from the settings and unset values ("", None, []) give nothing.
    Adding an option to a step is one schema entry, one line in its table, one CLI argument.
    """
    words = []
    for key, flag in flags.items():
        node = settings
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        words += (flag if isinstance(flag, Flag) else Flag(flag)).words(node)
    return shlex.join(words)


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
