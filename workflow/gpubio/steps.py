"""Each step's settings, declared once: in the config schema.

A setting a step takes on its command line carries ``x-steps`` in its schema entry: the
subcommands that take it, each by name (flag ``--<key>``, the key's last part with ``-``)
or as ``{subcommand: --flag}``. From that one entry come

- the subcommand's option (:func:`add_step_options`): type, choices, number of values and
  default from the schema, its description as help (``python -m gpubio <step> --help``);
- the rule's command line (:func:`step_options`): the configured values as quoted words;
- the settings the rules read (:func:`gpubio.config.section_settings`: schema defaults filled).

So a default is written once, in the schema; the CLI run by hand behaves as the workflow does.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpubio.config import DOMAINS, load_schema

_TYPES = {"integer": int, "number": float, "string": str, "boolean": bool}


@dataclass(frozen=True)
class StepOption:
    """One setting of one step: where it sits in the config, its flag and its schema entry."""

    domain: str
    key: str  # dotted, inside the domain's section
    flag: str
    entry: Mapping[str, Any]

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default(self) -> Any:
        return self.entry.get("default")

    @property
    def config_key(self) -> str:
        return f"{self.domain}.{self.key}"

    def kind(self) -> str:
        """boolean, integer, number, string or array (null beside a type is "not set")."""
        if "enum" in self.entry:
            values = [v for v in self.entry["enum"] if v is not None]
            return {bool: "boolean", int: "integer", float: "number"}.get(type(values[0]), "string")
        kinds = self.entry.get("type", "string")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        return next(k for k in kinds if k != "null")

    def item_type(self) -> type:
        items = self.entry.get("items", {})
        if "enum" in items:
            return type(items["enum"][0])
        return _TYPES.get(items.get("type", "string"), str)

    def argument(self) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The ``add_argument`` call of this option."""
        kind = self.kind()
        # argparse formats help with %: a description's own % is doubled, %(default)s is its default
        text = self.entry.get("description", "").strip().replace("%", "%%")
        where = f"config: {self.config_key}; default: %(default)s"
        kwargs: dict[str, Any] = {"default": self.default, "help": f"{text} ({where})" if text else where}
        if kind == "boolean":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "array":
            low, high = self.entry.get("minItems"), self.entry.get("maxItems")
            kwargs["type"] = self.item_type()
            kwargs["nargs"] = low if low is not None and low == high else ("+" if low else "*")
            if "enum" in self.entry.get("items", {}):
                kwargs["choices"] = self.entry["items"]["enum"]
        else:
            kwargs["type"] = _TYPES[kind]
            if "enum" in self.entry:
                kwargs["choices"] = [v for v in self.entry["enum"] if v is not None]
        kwargs["dest"] = self.dest
        return (self.flag,), kwargs

    def words(self, value: Any) -> list[str]:
        """The configured value as command-line words; unset ("", None, []) gives none."""
        if value == [] and self.default:  # an empty list where the default has items: say so
            return [self.flag]
        if value is None or value == "" or value == []:
            return []
        if isinstance(value, bool):
            return [self.flag] if value else ["--no-" + self.flag.removeprefix("--")]
        if isinstance(value, (list, tuple)):
            return [self.flag, *map(_word, value)]
        return [self.flag, _word(value)]


def _word(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def _all_options() -> dict[str, tuple[StepOption, ...]]:
    """subcommand -> its options, in schema order, from every domain's schema."""
    found: dict[str, list[StepOption]] = {}

    def walk(domain: str, node: Mapping[str, Any], prefix: str) -> None:
        for name, entry in (node.get("properties") or {}).items():
            key = f"{prefix}{name}"
            for step in entry.get("x-steps", ()):
                step, flag = next(iter(step.items())) if isinstance(step, Mapping) else (step, None)
                flag = flag or "--" + name.replace("_", "-")
                found.setdefault(step, []).append(StepOption(domain, key, flag, entry))
            if entry.get("type") == "object":
                walk(domain, entry, f"{key}.")

    schema = load_schema("config")
    for domain in DOMAINS:
        walk(domain, schema["properties"][domain], "")
    return {step: tuple(options) for step, options in found.items()}


def options_of(step: str) -> tuple[StepOption, ...]:
    """The schema-declared options of a subcommand (none for a step without settings)."""
    return _all_options().get(step, ())


def declared_steps() -> list[str]:
    return sorted(_all_options())


def add_step_options(parser: argparse.ArgumentParser, step: str) -> None:
    """The subcommand's options from the schema (types, defaults, help)."""
    for option in options_of(step):
        flags, kwargs = option.argument()
        parser.add_argument(*flags, **kwargs)


def step_options(settings: Mapping[str, Any], step: str, exclude: Iterable[str] = ()) -> str:
    """A step's configured settings as quoted command-line words, for its rule's command.

    ``settings``: the domain's section (schema defaults filled, :func:`section_settings`);
    ``exclude``: dotted key prefixes left out (the settings of a method not chosen).
    """
    skipped = tuple(exclude)
    words: list[str] = []
    for option in options_of(step):
        if skipped and option.key.startswith(skipped):
            continue
        node: Any = settings
        for part in option.key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        words += option.words(node)
    return shlex.join(words)


def settings_class(name: str, step: str, section: str, doc: str = "") -> type:
    """A frozen dataclass of a step's settings under ``section`` (dotted, in the domain's
    section), with the schema's types and defaults: the typed settings a library function
    takes. Field names are the keys' last parts; a step's flag for one is ``--<field>``."""
    import dataclasses

    fields = []
    for option in options_of(step):
        if not option.key.startswith(f"{section}."):
            continue
        field_name = option.key.rsplit(".", 1)[1]
        kind = option.kind()
        annotation: Any = list if kind == "array" else _TYPES[kind]
        if option.default is None:
            annotation = annotation | None
        default = option.default
        if kind == "number" and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        fields.append((field_name, annotation, dataclasses.field(default=default)))
    if not fields:
        raise ValueError(f"no setting of step {step!r} under {section!r} in the schema")
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__doc__ = doc or f"The settings under {section} that step {step} takes (defaults: the schema's)."
    return cls
