"""Load and validate config/config.yaml and the sample sheets (one per domain).

Every problem becomes one line naming the file, the row or key, and the fix, and all
of them are raised together as a ConfigError before Snakemake builds a single job.
"""

from __future__ import annotations

import copy
import csv
import difflib
import functools
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
REPO_DIR = SCHEMA_DIR.parent.parent
DOMAINS = ("genomics", "transcriptomics", "imaging", "histopathology")
SAFE_NAME = "[A-Za-z0-9._-]"


class ConfigError(Exception):
    """Bad configuration or sample sheet; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def report(self) -> str:
        lines = [f"gpubio: {len(self.problems)} problem(s) in the configuration:"]
        return "\n".join(lines + [f"  {p}" for p in self.problems])


@dataclass
class Project:
    """A validated configuration: the config (defaults filled) and one table per active domain."""

    config: dict
    sheets: dict = field(default_factory=dict)  # domain -> pandas.DataFrame indexed by sample

    def samples(self, domain: str) -> list[str]:
        sheet = self.sheets.get(domain)
        return [] if sheet is None else list(sheet.index)

    def active(self, domain: str) -> bool:
        return bool(self.samples(domain))


def load_schema(name: str) -> dict:
    """A schema from workflow/schemas; "config" gets each domain's section merged in.

    The caller gets its own copy; the files are parsed once per process (every Snakemake
    start reads them several times, also inside each cluster job).
    """
    return copy.deepcopy(_parsed_schema(name))


@functools.cache
def _parsed_schema(name: str) -> dict:
    with open(SCHEMA_DIR / f"{name}.schema.yaml") as fh:
        schema = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if name == "config":
        for domain in DOMAINS:
            schema["properties"][domain] = _parsed_schema(f"config.{domain}")
    return schema


def load_project(config: dict, config_file: str = "config/config.yaml", workdir: str | os.PathLike = ".") -> Project:
    """Validate `config` and every sample sheet it names; raise ConfigError listing all problems."""
    project, problems, _ = read_project(config, config_file, workdir)
    if problems:
        raise ConfigError(problems)
    return project


def read_project(
    config: dict,
    config_file: str = "config/config.yaml",
    workdir: str | os.PathLike = ".",
    only_samples: Collection[str] | None = None,
) -> tuple[Project, list[str], set[str]]:
    """Validate `config` and every sample sheet it names, raising nothing.

    Returns the project (defaults filled), one line per problem, and the sections (domains,
    "gpu") whose own problems make their later checks meaningless: a later check on a value
    of the wrong type, or on a sheet with bad rows, would fail with a traceback or say the
    same thing twice. ``only_samples``: check only these samples' rows (a cluster job of a
    run whose sheets were checked when it started); every row is still read.
    """
    workdir = Path(workdir)
    schema = _parsed_schema("config")  # read only: validation and defaults copy what they take
    if not isinstance(config, dict):
        return Project(config={}), _check_config(config, schema, config_file), {*DOMAINS, "gpu"}
    errors = _config_errors(config, schema)
    problems = [_describe_config_error(error, config_file) for error in errors]
    flawed = {str(error.absolute_path[0]) for error in errors if error.absolute_path}
    _fill_defaults(config, schema)
    project = Project(config=config)
    for domain in DOMAINS:
        section = config.get(domain)
        if not isinstance(section, dict) or not isinstance(section.get("samples"), str):
            continue
        table, sheet_problems = read_sample_sheet(domain, section["samples"], workdir, only_samples)
        problems += sheet_problems
        if sheet_problems:
            flawed.add(domain)
        if table is not None and len(table):
            project.sheets[domain] = table
    if project.active("genomics") and "genomics" not in flawed:
        reference_problems = _check_reference(config, config_file, workdir)
        problems += reference_problems
        if reference_problems:
            flawed.add("genomics")
    if "gpu" not in flawed:
        partitions = project_file(config["gpu"]["partitions"], workdir)
        if partitions is None:
            problems.append(
                f"{config_file}: gpu.partitions '{config['gpu']['partitions']}' does not exist; "
                "point it at your site's partitions file (see profiles/slurm-gpu/partitions.yaml)"
            )
            flawed.add("gpu")
        else:
            config["gpu"]["partitions"] = str(partitions)
    return project, problems, flawed


def yaml_syntax_problem(path: str | os.PathLike) -> str | None:
    """Where a YAML file breaks YAML syntax: the file, line and column and the parser's words
    (Snakemake's own message names neither the file nor the line); None when it parses or
    does not exist."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        return f"{path}: cannot be read as a text file ({error})"
    try:
        yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.composer.ComposerError) as error:
        mark = error.problem_mark
        within = ""
        if error.context and error.context_mark is not None:
            within = f" ({error.context} at line {error.context_mark.line + 1})"
        return (
            f"{path} line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {error.problem}{within}; "
            "fix the syntax there (indent with spaces, never tabs; close every bracket and quote)"
        )
    except yaml.YAMLError:  # valid syntax; what it means is the schema's to judge
        return None
    return None


def section_settings(config: dict, section: str) -> dict:
    """One section of the config ("gpu" or a domain) with every schema default filled, also
    when the section is absent (module off): what the rules read, never raw config."""
    schema = _parsed_schema("config")["properties"][section]  # read only
    settings = copy.deepcopy(config.get(section) if isinstance(config, dict) else None)
    if not isinstance(settings, dict):
        settings = {}
    _fill_defaults(settings, schema, top=False)
    return settings


# --------------------------------------------------------------------------- config.yaml


_DOTTED_KEY = re.compile(r"\b((?:gpu|" + "|".join(DOMAINS) + r")(?:\.\w+)+)")


def attribute_problems(problems: list[str], config_files: list[str], workdir: str | os.PathLike = ".") -> list[str]:
    """Name, in each problem about a key, the config file that sets that key. With overlays
    (`--configfile`, base file first) a problem is first written against the last file; a key
    set only in config/config.yaml, or in no file, is that file's (the base's) problem."""
    if len(set(config_files)) < 2:
        return problems
    last, layers = config_files[-1], []
    for name in config_files:
        try:
            with open(Path(workdir) / name) as fh:
                layers.append((name, yaml.safe_load(fh) or {}))
        except (OSError, yaml.YAMLError):
            layers.append((name, {}))

    def origin(key: str) -> str:
        for name, layer in reversed(layers):
            node = layer
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return name
        return config_files[0]

    attributed = []
    for problem in problems:
        match = _DOTTED_KEY.search(problem) if problem.startswith(f"{last}: ") else None
        if match:
            problem = f"{origin(match.group(1))}: {problem[len(last) + 2 :]}"
        attributed.append(problem)
    return attributed


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _check_config(config: dict, schema: dict, config_file: str) -> list[str]:
    if not isinstance(config, dict):
        return [f"{config_file}: expected a mapping of settings, found {type(config).__name__}"]
    return [_describe_config_error(error, config_file) for error in _config_errors(config, schema)]


def _config_errors(config: dict, schema: dict) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft7Validator(schema)
    return sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])


def _describe_config_error(error: jsonschema.ValidationError, config_file: str) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        lines = []
        for key in unknown:
            full = f"{where}.{key}" if error.absolute_path else key
            hint = difflib.get_close_matches(key, known, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(known)}"
            lines.append(f"{config_file}: unknown key '{full}'; {fix}")
        return "\n".join(lines)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{config_file}: section '{where}' is missing the key '{missing}'; add it"
    if error.validator == "type":
        return f"{config_file}: key '{where}' must be {error.validator_value}, found {error.instance!r}; fix the value"
    if error.validator == "pattern":
        allowed = error.validator_value.strip("^$+")
        return (
            f"{config_file}: key '{where}' = {error.instance!r} may only contain {allowed} "
            "(it becomes a word of a command line); fix the value"
        )
    if error.validator in ("minimum", "maximum"):
        return f"{config_file}: key '{where}' = {error.instance!r} is out of range ({error.message})"
    return f"{config_file}: key '{where}': {error.message}"


def _fill_defaults(node: dict, schema: dict, top: bool = True) -> None:
    """Fill schema defaults in place; an absent domain section stays absent (module off)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in node:
            if "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            elif sub.get("type") == "object" and not (top and key in DOMAINS):
                node[key] = {}
            else:
                continue
        if isinstance(node[key], dict) and "properties" in sub:
            _fill_defaults(node[key], sub, top=False)


def project_file(value: str, workdir: str | os.PathLike = ".") -> Path | None:
    """A file named in config: from the working directory, else from the repository
    (so the shipped profiles are found when running with --directory elsewhere)."""
    for base in (Path(workdir), REPO_DIR):
        candidate = base / value
        if candidate.is_file():
            return candidate if base == Path(workdir) else candidate.resolve()
    return None


def _check_reference(config: dict, config_file: str, workdir: Path) -> list[str]:
    reference = config["genomics"].get("reference")
    if not reference:
        return [f"{config_file}: genomics has samples but no 'reference'; add genomics.reference: <FASTA>"]
    if not (workdir / reference).is_file():
        return [
            f"{config_file}: genomics.reference '{reference}' does not exist; "
            "fix the path (relative paths are from the working directory)"
        ]
    return []


# --------------------------------------------------------------------------- sample sheets


def read_sample_sheet(
    domain: str, path: str, workdir: str | os.PathLike = ".", only_samples: Collection[str] | None = None
):
    """Read and validate one sheet; return (table or None, problems). Absent or empty = module off.
    ``only_samples``: validate only these samples' rows.

    Only a line that starts with "#" is a comment (a "#" inside a path is part of it); blank
    lines are skipped. Problems name each row by its line in the file, comments and blank
    lines counted (:func:`row_where`; the table keeps them in ``attrs["lines"]``).
    """
    import pandas as pd

    full = Path(workdir) / path
    if not full.exists():
        return None, []
    try:
        text = full.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot be read as a tab-separated table ({exc}); fix the file"]
    numbered = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        return None, []
    parsed = []
    for number, line in numbered:
        try:
            parsed.append((number, next(csv.reader([line], delimiter="\t", strict=True))))
        except csv.Error as exc:
            return None, [
                f"{path} line {number}: cannot be read as tab-separated values ({exc}); a value that "
                'starts with a quote must end with it ("a b.fq"), or leave the quotes out'
            ]
    (_, header), *rows = parsed
    columns = [c.strip() for c in header]
    problems = _header_problems(path, columns)
    if problems:
        return None, problems
    if not rows:
        return None, []
    cells = []
    for i, (number, fields) in enumerate(rows, start=1):
        extra = fields[len(columns) :]
        if extra:  # pandas would take the first column for an index and shift every value
            where = f"{path} row {i} (line {number}, sample '{fields[0].strip()}')"
            problems.append(_extra_columns_problem(where, extra, len(columns)))
        cells.append([v.strip() for v in fields[: len(columns)]] + [""] * (len(columns) - len(fields)))
    table = pd.DataFrame(cells, columns=columns, dtype=str)
    table.attrs["lines"] = [number for number, _ in rows]
    schema = _parsed_schema(domain)  # read only
    missing = [c for c in schema.get("required", []) if c not in table.columns]
    if missing:
        return None, [
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"the header has: {', '.join(table.columns)}"
        ]
    validator = jsonschema.Draft7Validator(schema)
    seen: dict[str, int] = {}
    for i, row in enumerate(table.to_dict("records"), start=1):
        values = {k: v for k, v in row.items() if v != ""}
        name = row.get("sample", "")
        if only_samples is not None and name not in only_samples:
            continue
        where = row_where(path, table, i, name)
        problems += _row_problems(values, schema, validator, where, Path(workdir))
        if name in seen:
            problems.append(
                f"{where}: duplicate sample name, already used in row {seen[name]}; give every row its own name"
            )
        else:
            seen[name] = i
    table = table.set_index("sample", drop=False)
    return table, problems


def row_where(sheet_path: str, table, i: int, sample: str) -> str:
    """How a problem names row ``i`` (from 1) of a sheet read by :func:`read_sample_sheet`: its
    row, its line in the file (comment and blank lines counted) and its sample."""
    lines = table.attrs.get("lines")
    line = lines[i - 1] if lines and i <= len(lines) else i + 1
    return f"{sheet_path} row {i} (line {line}, sample '{sample}')"


def _header_problems(path: str, columns: list[str]) -> list[str]:
    problems = []
    if "" in columns[:-1] or (columns and columns[-1] == "" and len(columns) > 1):
        at = [n for n, c in enumerate(columns, start=1) if c == ""]
        problems.append(
            f"{path}: the header's column {', '.join(map(str, at))} has no name "
            "(a tab too many, e.g. at the end of the header line); remove it or name the column"
        )
    twice = sorted({c for c in columns if c and columns.count(c) > 1})
    if twice:
        problems.append(f"{path}: the header names column(s) {', '.join(map(repr, twice))} twice; keep one of each")
    return problems


def _extra_columns_problem(where: str, extra: list[str], header_columns: int) -> str:
    values = [v for v in extra if v.strip()]
    if not values:
        return (
            f"{where}: has {len(extra)} empty column(s) more than the header's {header_columns} "
            "(a tab at the end of the line?); remove the trailing tab(s)"
        )
    return (
        f"{where}: has {len(extra)} column(s) more than the header's {header_columns} "
        f"({', '.join(map(repr, values))}); add their names to the header or remove them"
    )


def _row_problems(values: dict, schema: dict, validator, where: str, workdir: Path) -> list[str]:
    problems = []
    for error in validator.iter_errors(values):
        column = error.absolute_path[0] if error.absolute_path else None
        if error.validator == "pattern" and column == "sample":
            problems.append(
                f"{where}: sample name {error.instance!r} may only contain {SAFE_NAME} "
                "(it becomes a file name and a shell word); rename it"
            )
        elif error.validator == "enum":
            allowed = ", ".join(error.validator_value)
            problems.append(f"{where}: {column} {error.instance!r} is not one of: {allowed}; fix the value")
        elif error.validator == "required":
            missing = error.message.split("'")[1]
            problems.append(f"{where}: column '{missing}' is empty; fill it in")
        else:
            problems.append(f"{where}: {column}: {error.message}")
    inputs = [c for c in schema.get("x-one-input-of", []) if c in values]
    options = " or ".join(schema.get("x-one-input-of", []))
    if len(inputs) > 1:
        problems.append(f"{where}: has {len(inputs)} inputs ({', '.join(inputs)}); give exactly one of {options}")
    elif not inputs and len(schema.get("x-one-input-of", [])) > 1:
        problems.append(f"{where}: has no input; give exactly one of {options}")
    if "fastq_2" in values and "fastq_1" not in values:
        problems.append(f"{where}: fastq_2 is set without fastq_1; put the first mate in fastq_1")
    formats = schema.get("x-formats", {})
    for column in schema.get("x-paths", []):
        if column not in values:
            continue
        value = values[column]
        target = workdir / value
        if not target.exists():
            problems.append(
                f"{where}: {column} '{value}' does not exist; fix the path "
                "(relative paths are from the working directory)"
            )
            continue
        endings = formats.get(column)
        if endings and not _has_format(target, endings):
            problems.append(
                f"{where}: {column} '{value}' is not a {' / '.join(endings)} "
                f"{'file or directory' if '/' in endings else 'file'}; give a supported input"
            )
    return problems


def _has_format(path: Path, endings: list[str]) -> bool:
    if path.is_dir():
        return "/" in endings
    name = path.name.lower()
    return any(name.endswith(e) for e in endings if e != "/")
