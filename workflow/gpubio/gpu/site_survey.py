"""Draft a site's partitions.yaml from a live SLURM cluster (`scripts/partitions-from-sinfo`).

Reads `scontrol show node -o` (GRES types and counts, CPUs, memory, partitions of each
node) and `scontrol show partition -o` (time and per-node limits), and writes the SLURM
executor plugin's `--slurm-partition-config` format plus gpubio's `gpu_models` section.
Each GRES type is looked up in gpubio's GPU catalogue; what the lookup cannot settle is
marked `CHECK` in a comment on the line concerned:

- a bare family name (`a100`) that several catalogue models share (A100-40 / A100-80):
  gpubio reads it as the largest; name the card with `--gpu-model a100=a100-40`;
- a GRES type the catalogue does not know: map it to a model (`--gpu-model`), or add the
  model to `gpu.catalogue` in config.yaml;
- GPUs without a GRES type: jobs cannot ask for a model there (give them `Type=` in gres.conf).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .catalogue import Catalogue, CatalogueError, load_catalogue

_FIELD = re.compile(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)")
_UNLIMITED = {"", "unlimited", "infinite", "none", "(null)", "n/a"}


class SurveyError(RuntimeError):
    """SLURM could not be asked, or said something this reader does not understand."""


@dataclass
class NodeSurvey:
    name: str
    cpus: int
    memory_mb: int
    gpus: dict[str, int]  # GRES type -> count on this node; "" for GPUs without a type
    partitions: list[str]


@dataclass
class PartitionSurvey:
    name: str
    max_time: str | None = None
    max_cpus_per_node: int | None = None
    max_mem_per_node: int | None = None
    nodes: list[NodeSurvey] = field(default_factory=list)


def scontrol_records(text: str) -> list[dict[str, str]]:
    """One dict per line of `scontrol show ... -o` (key=value pairs; values may hold spaces)."""
    return [dict(_FIELD.findall(line.strip())) for line in text.splitlines() if "=" in line]


def parse_gres(text: str) -> dict[str, int]:
    """GPU GRES of a node: `gpu:a100:4(S:0-1),gpu:l40s:2,shard:8` -> {a100: 4, l40s: 2}."""
    gpus: dict[str, int] = {}
    for item in re.split(r",(?![^()]*\))", text or ""):
        parts = re.sub(r"\(.*\)$", "", item.strip()).split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) == 2 and parts[1].isdigit():
            gpus[""] = gpus.get("", 0) + int(parts[1])
        elif len(parts) >= 2:
            count = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
            gpus[parts[1]] = gpus.get(parts[1], 0) + count
    return gpus


def _number(value: str | None) -> int | None:
    if value is None or value.strip().lower() in _UNLIMITED:
        return None
    match = re.match(r"^(\d+)", value.strip())
    return int(match.group(1)) if match else None


def slurm_minutes(value: str | None) -> float | None:
    """SLURM time limit (`UNLIMITED`, `2-00:00:00`, `12:00:00`, `30:00`, `90`) in minutes."""
    if value is None or value.strip().lower() in _UNLIMITED:
        return None
    days, _, clock = value.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60


def survey(nodes_text: str, partitions_text: str) -> list[PartitionSurvey]:
    """Partitions (in SLURM's order) with their nodes, from `scontrol show node/partition -o`."""
    partitions = {}
    for record in scontrol_records(partitions_text):
        if "PartitionName" not in record:
            raise SurveyError(f"not `scontrol show partition -o` output: {sorted(record)[:5]} ...")
        partitions[record["PartitionName"]] = PartitionSurvey(
            name=record["PartitionName"],
            max_time=record.get("MaxTime"),
            max_cpus_per_node=_number(record.get("MaxCPUsPerNode")),
            max_mem_per_node=_number(record.get("MaxMemPerNode")),
        )
    for record in scontrol_records(nodes_text):
        if "NodeName" not in record:
            raise SurveyError(f"not `scontrol show node -o` output: {sorted(record)[:5]} ...")
        node = NodeSurvey(
            name=record["NodeName"],
            cpus=_number(record.get("CPUTot")) or 0,
            memory_mb=_number(record.get("RealMemory")) or 0,
            gpus=parse_gres(record.get("Gres", "")),
            partitions=[p for p in record.get("Partitions", "").split(",") if p],
        )
        for name in node.partitions:
            if name in partitions:
                partitions[name].nodes.append(node)
    return list(partitions.values())


def read_cluster(run=subprocess.run) -> list[PartitionSurvey]:
    """Ask the cluster this machine's SLURM client talks to (SLURM_CONF or /etc/slurm)."""
    texts = []
    for what in ("node", "partition"):
        cmd = ["scontrol", "show", what, "-o"]
        try:
            proc = run(cmd, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise SurveyError(
                "scontrol not found: run this on a machine with the SLURM client (a login node)"
            ) from None
        if proc.returncode != 0:
            raise SurveyError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
        texts.append(proc.stdout)
    return survey(*texts)


# ------------------------------------------------------------------ the draft
@dataclass
class Draft:
    partitions: dict[str, dict]
    gpu_models: dict[str, dict[str, str]]
    notes: dict[tuple[str, str], str]  # (partition, key) -> comment for that line


def _duration(minutes: float) -> str:
    for unit, size in (("d", 1440), ("h", 60)):
        if minutes % size == 0:
            return f"{int(minutes // size)}{unit}"
    return f"{math.ceil(minutes)}m"


def describe_gres(gres_type: str, catalogue: Catalogue, hint: str | None) -> tuple[str | None, str]:
    """(catalogue model to state in gpu_models or None, comment) for one GRES type."""
    if hint:
        model = catalogue.resolve(hint)  # CatalogueError: a bad hint is the caller's error
        implied = catalogue.resolve(gres_type) if _resolves(catalogue, gres_type) else None
        return (None if implied == model else model.name.lower()), f"{gres_type} -> {model.describe()} (as given)"
    try:
        model = catalogue.resolve(gres_type)
    except CatalogueError:
        return None, (
            f"CHECK: GRES type {gres_type!r} is not in gpubio's GPU catalogue; map it with "
            f"--gpu-model {gres_type}=<model> or add it to gpu.catalogue in config.yaml"
        )
    # a bare family name that sized names split into several models (a100: A100-40 / A100-80)
    others = sorted({m.name for m in catalogue.values() if m != model and _sized(catalogue, gres_type, m)})
    if others:
        return None, (
            f"CHECK: {gres_type!r} read as {model.describe()}, the largest of its family; if these are "
            f"{' or '.join(others)}, draft again with --gpu-model {gres_type}={others[0].lower()}"
        )
    return None, f"{gres_type} -> {model.describe()}"


def _resolves(catalogue: Catalogue, name: str) -> bool:
    try:
        catalogue.resolve(name)
        return True
    except CatalogueError:
        return False


def _sized(catalogue: Catalogue, family: str, model) -> bool:
    try:
        return catalogue.resolve(f"{family}-{round(model.vram_gb)}") == model
    except CatalogueError:
        return False


def draft_inventory(partitions: list[PartitionSurvey], catalogue: Catalogue, hints: dict[str, str]) -> Draft:
    """The partitions file's content: per partition, GPUs per node (the largest node),
    GRES types, and the limits a job on one node can reach."""
    draft = Draft({}, {}, {})
    for part in partitions:
        limits: dict = {}
        nodes = part.nodes
        typed = [{t: n for t, n in node.gpus.items() if t} for node in nodes]
        max_gpu = max((sum(g.values()) for g in typed), default=0)
        untyped = max((node.gpus.get("", 0) for node in nodes), default=0)
        gres_types = sorted({t for g in typed for t in g})
        limits["max_gpu"] = max_gpu
        if gres_types:
            limits["available_gpu_models"] = gres_types
            comments, stated = [], {}
            for gres_type in gres_types:
                model, comment = describe_gres(gres_type, catalogue, hints.get(gres_type))
                comments.append(comment)
                if model:
                    stated[gres_type] = model
            draft.notes[(part.name, "available_gpu_models")] = "; ".join(comments)
            if stated:
                draft.gpu_models[part.name] = stated
        if untyped:
            draft.notes[(part.name, "max_gpu")] = (
                f"CHECK: {untyped} GPU(s) per node without a GRES type are left out; give them "
                f"Type= in gres.conf so jobs can ask for a model, then draft again"
            )
        if not nodes:
            draft.notes[(part.name, "max_gpu")] = "CHECK: no nodes found in this partition"
        cpus = max((n.cpus for n in nodes), default=0)
        if cpus:
            limits["max_cpus_per_task"] = min(cpus, part.max_cpus_per_node or cpus)
        memory = max((n.memory_mb for n in nodes), default=0)
        if memory:
            limits["max_mem_mb"] = min(memory, part.max_mem_per_node or memory)
        minutes = slurm_minutes(part.max_time)
        if minutes:
            limits["max_runtime"] = _duration(minutes)
        draft.partitions[part.name] = limits
    return draft


def _scalar(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", value):
        return json.dumps(value)  # a YAML double-quoted string
    return str(value)


def render(draft: Draft, source: str) -> str:
    """partitions.yaml text, with the notes as comments on their lines."""
    lines = [
        f"# Site inventory drafted by scripts/partitions-from-sinfo from {source}.",
        "# Review every line marked CHECK. Limits are what one node offers (the largest node",
        "# of each partition) capped by the partition's own; max_gpu is GPUs per node.",
        "# Format: see profiles/slurm-gpu/partitions.yaml.",
        "partitions:",
    ]
    for name, limits in draft.partitions.items():
        lines.append(f"  {_scalar(name)}:")
        for key, value in limits.items():
            note = draft.notes.get((name, key))
            lines.append(f"    {key}: {_scalar(value)}" + (f"  # {note}" if note else ""))
        if "max_gpu" not in limits and (name, "max_gpu") in draft.notes:
            lines.append(f"    # {draft.notes[(name, 'max_gpu')]}")
    if draft.gpu_models:
        lines += ["", "# Read by gpubio only: which catalogue model a partition's GRES type means.", "gpu_models:"]
        for name, models in draft.gpu_models.items():
            lines.append(
                f"  {_scalar(name)}: {{" + ", ".join(f"{_scalar(t)}: {_scalar(m)}" for t, m in models.items()) + "}"
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ command line
def _hint(text: str) -> tuple[str, str]:
    gres_type, sep, model = text.partition("=")
    if not sep or not gres_type or not model:
        raise argparse.ArgumentTypeError(f"expected GRES_TYPE=MODEL (e.g. a100=a100-40), got {text!r}")
    return gres_type, model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partitions-from-sinfo",
        description="Draft profiles/slurm-gpu/partitions.yaml from the SLURM cluster this machine talks to "
        "(scontrol show node / partition). Lines gpubio cannot settle are marked CHECK.",
    )
    parser.add_argument("--out", help="write here instead of printing (an existing file is kept unless --force)")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    parser.add_argument(
        "--gpu-model",
        type=_hint,
        action="append",
        default=[],
        metavar="GRES_TYPE=MODEL",
        help="the catalogue model a GRES type means, e.g. a100=a100-40 (repeatable)",
    )
    parser.add_argument(
        "--from-files",
        nargs=2,
        metavar=("NODES", "PARTITIONS"),
        help="read saved `scontrol show node -o` and `scontrol show partition -o` output instead of asking SLURM",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    catalogue = load_catalogue()
    hints = dict(args.gpu_model)
    try:
        for model in hints.values():
            catalogue.resolve(model)
        if args.from_files:
            partitions = survey(*(Path(p).read_text() for p in args.from_files))
            source = " and ".join(args.from_files)
        else:
            partitions = read_cluster()
            source = "`scontrol show node/partition -o`"
    except (SurveyError, CatalogueError, OSError) as error:
        print(f"partitions-from-sinfo: {error}", file=sys.stderr)
        return 1
    text = render(draft_inventory(partitions, catalogue, hints), source)
    if not args.out:
        print(text, end="")
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"partitions-from-sinfo: {out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    out.write_text(text)
    marked = text.count("CHECK:")
    print(f"wrote {out}: {len(partitions)} partition(s), {marked} line(s) marked CHECK", file=sys.stderr)
    return 0
