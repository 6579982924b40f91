"""What the site has: partitions, their GPUs and limits, read from partitions.yaml.

The file is the SLURM executor plugin's ``--slurm-partition-config`` format, so the
same file drives the plugin's own partition scoring::

    partitions:
      gpu-a100:
        max_gpu: 4                    # GPUs per node
        available_gpu_models: [a100]  # SLURM GRES types
        max_cpus_per_task: 64
        max_mem_mb: 512000
        max_runtime: 2d
    gpu_models:                       # gpubio only; the plugin reads `partitions` alone
      gpu-a100: {a100: a100-40}       # this site's bare "a100" is the 40 GB card

Keys inside a partition must be fields of the plugin's ``PartitionLimits`` (it passes
them as keyword arguments and fails on anything else), plus ``cluster``.

The plugin's schema has no node count, so gpubio takes ``max_gpu`` (GPUs per node) as
the number of GPUs a partition offers: placement needs only "does a job fit one node",
and the balanced planner treats the partition as ``max_gpu`` GPUs working in parallel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_INVENTORY",
    "Inventory",
    "InventoryError",
    "SitePartition",
    "inventory_from_dict",
    "load_inventory",
]

# PartitionLimits fields of snakemake-executor-plugin-slurm 2.x, plus the cluster keys
# its read_partition_file pops before building PartitionLimits.
PLUGIN_PARTITION_KEYS = frozenset(
    {
        "max_runtime",
        "max_mem_mb",
        "max_mem_mb_per_cpu",
        "max_cpus_per_task",
        "max_threads",
        "max_nodes",
        "max_tasks",
        "max_tasks_per_node",
        "max_gpu",
        "available_gpu_models",
        "max_cpus_per_gpu",
        "supports_mpi",
        "max_mpi_tasks",
        "available_constraints",
        "slurm_cluster",
        "cluster",
        "clusters",
    }
)
_TOP_LEVEL_KEYS = frozenset({"partitions", "gpu_models"})


class InventoryError(ValueError):
    """partitions.yaml (or an inventory dict) is malformed."""


@dataclass(frozen=True)
class SitePartition:
    """One SLURM partition. Limits are ``inf`` where the file gives none."""

    name: str
    max_gpu: int = 0
    gpu_types: tuple[str, ...] = ()
    max_runtime: float = math.inf  # minutes
    max_mem_mb: float = math.inf
    max_cpus_per_task: float = math.inf
    max_cpus_per_gpu: float = math.inf
    # GRES type -> catalogue model name, where the GRES name alone is ambiguous.
    gpu_models: Mapping[str, str] = field(default_factory=dict)

    @property
    def has_gpus(self) -> bool:
        return self.max_gpu > 0

    def catalogue_name(self, gres_type: str) -> str:
        """Which catalogue model this partition's GRES type means."""
        return self.gpu_models.get(gres_type, gres_type)


@dataclass(frozen=True)
class Inventory:
    """The site's partitions in file order (order breaks ties between equals)."""

    partitions: tuple[SitePartition, ...]
    source: str = "<built-in>"

    def __post_init__(self) -> None:
        names = [p.name for p in self.partitions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InventoryError(f"{self.source}: duplicate partition(s) {dupes}")

    def __getitem__(self, name: str) -> SitePartition:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.partitions)

    def without(self, *names: str) -> Inventory:
        """A copy lacking the named partitions (e.g. one drained for maintenance)."""
        missing = set(names) - set(self.names)
        if missing:
            raise KeyError(f"no partition(s) {sorted(missing)} in {self.source}")
        kept = tuple(p for p in self.partitions if p.name not in names)
        return replace(self, partitions=kept)


def load_inventory(path: str | Path) -> Inventory:
    """Read partitions.yaml; errors name the file, partition and key."""
    # imported here: the GPU-pinning wrapper (gpubio.gpu.devices) must start in vendor images
    # that have a bare python3
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InventoryError(
            f"partitions file not found: {path}. Point config['gpu']['partitions'] at "
            f"your site's file (profiles/slurm-gpu/partitions.yaml is an example)."
        ) from None
    except yaml.YAMLError as err:
        raise InventoryError(f"{path}: not valid YAML: {err}") from None
    return inventory_from_dict(data, source=str(path))


def inventory_from_dict(data: Any, source: str = "<dict>") -> Inventory:
    """Build an Inventory from the parsed partitions.yaml structure."""
    if not isinstance(data, Mapping) or "partitions" not in data:
        raise InventoryError(f"{source}: missing the top-level 'partitions' mapping")
    unknown = sorted(set(map(str, data)) - _TOP_LEVEL_KEYS)
    if unknown:
        raise InventoryError(f"{source}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    raw_partitions = data["partitions"]
    if not isinstance(raw_partitions, Mapping) or not raw_partitions:
        raise InventoryError(f"{source}: 'partitions' must be a non-empty mapping")
    raw_models = data.get("gpu_models") or {}
    if not isinstance(raw_models, Mapping):
        raise InventoryError(f"{source}: 'gpu_models' must be a mapping partition -> ...")
    stray = sorted(set(map(str, raw_models)) - set(map(str, raw_partitions)))
    if stray:
        raise InventoryError(f"{source}: gpu_models names partition(s) {stray} that are not under 'partitions'")
    partitions = tuple(
        _partition(str(name), limits, raw_models.get(name), source) for name, limits in raw_partitions.items()
    )
    return Inventory(partitions=partitions, source=source)


def _partition(name: str, limits: Any, models: Any, source: str) -> SitePartition:
    at = f"{source}: partitions[{name!r}]"
    if not name.strip():
        raise InventoryError(f"{source}: a partition name is empty")
    limits = {} if limits is None else limits
    if not isinstance(limits, Mapping):
        raise InventoryError(f"{at} must be a mapping of limits, got {limits!r}")
    unknown = sorted(set(map(str, limits)) - PLUGIN_PARTITION_KEYS)
    if unknown:
        raise InventoryError(
            f"{at}: unknown key(s) {unknown}. The SLURM plugin passes these to "
            f"PartitionLimits and would fail too; allowed: "
            f"{sorted(PLUGIN_PARTITION_KEYS)}. gpubio-only settings go in the "
            f"top-level gpu_models section."
        )
    max_gpu = limits.get("max_gpu", 0)
    if isinstance(max_gpu, bool) or not isinstance(max_gpu, int) or max_gpu < 0:
        raise InventoryError(f"{at}['max_gpu'] must be a whole number >= 0, got {max_gpu!r}")
    gpu_types = limits.get("available_gpu_models") or []
    if not isinstance(gpu_types, list) or not all(isinstance(t, str) for t in gpu_types):
        raise InventoryError(f"{at}['available_gpu_models'] must be a list of GRES type names, got {gpu_types!r}")
    if max_gpu == 0 and gpu_types:
        # a job asking for these GPUs would be sent here, and CPU jobs would sit on GPU nodes
        raise InventoryError(
            f"{at}: max_gpu is 0 but available_gpu_models lists {gpu_types}; set max_gpu to its GPUs "
            f"per node, or remove available_gpu_models if the partition has no GPUs"
        )
    if max_gpu > 0 and not gpu_types:
        raise InventoryError(
            f"{at}: max_gpu is {max_gpu} but available_gpu_models is empty; list the "
            f"partition's GRES types (e.g. [a100]) so jobs can be placed on it"
        )
    return SitePartition(
        name=name,
        max_gpu=max_gpu,
        gpu_types=tuple(gpu_types),
        max_runtime=_minutes(limits.get("max_runtime", math.inf), f"{at}['max_runtime']"),
        max_mem_mb=_limit(limits.get("max_mem_mb", math.inf), f"{at}['max_mem_mb']"),
        max_cpus_per_task=_limit(limits.get("max_cpus_per_task", math.inf), f"{at}['max_cpus_per_task']"),
        max_cpus_per_gpu=_limit(limits.get("max_cpus_per_gpu", math.inf), f"{at}['max_cpus_per_gpu']"),
        gpu_models=_gpu_models(models, gpu_types, f"{source}: gpu_models[{name!r}]"),
    )


def _gpu_models(models: Any, gpu_types: list[str], at: str) -> dict[str, str]:
    """``a100-40`` (all the partition's GRES types) or ``{a100: a100-40}``."""
    if models is None:
        return {}
    if isinstance(models, str):
        return {t: models for t in gpu_types}
    if not isinstance(models, Mapping) or not all(isinstance(v, str) for v in models.values()):
        raise InventoryError(
            f"{at} must be a catalogue model name or a mapping GRES type -> model name, got {models!r}"
        )
    stray = sorted(set(map(str, models)) - set(gpu_types))
    if stray:
        raise InventoryError(f"{at}: GRES type(s) {stray} are not in the partition's available_gpu_models {gpu_types}")
    return {str(k): v for k, v in models.items()}


def _limit(value: Any, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InventoryError(f"{at} must be a positive number, got {value!r}")
    return float(value)


_UNIT_MINUTES = {"d": 1440.0, "h": 60.0, "m": 1.0, "s": 1 / 60}
_UNITS_RE = re.compile(r"^(?:\d+(?:\.\d+)?[dhms])+$")
_SLURM_RE = re.compile(r"^(?:(?P<d>\d+)-)?(?P<h>\d+)(?::(?P<m>\d+))?(?::(?P<s>\d+))?$")


def _minutes(value: Any, at: str) -> float:
    """Minutes from a number (minutes), ``2d12h``, ``1-00:00:00`` or ``12:00:00``.

    The plugin's parse_time_to_minutes takes these too; two-part ``A:B`` is refused
    because SLURM reads it as MM:SS and the plugin as HH:MM.
    """
    if isinstance(value, bool):
        raise InventoryError(f"{at} must be a duration, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise InventoryError(f"{at} must be positive, got {value!r}")
        return float(value)
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return _minutes(number, at)
    if _UNITS_RE.match(text):
        return sum(float(n) * _UNIT_MINUTES[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", text))
    m = _SLURM_RE.match(text)
    if m and (m.group("d") or m.group("s")):
        d, h, mi, s = (int(m.group(k) or 0) for k in "dhms")
        return d * 1440 + h * 60 + mi + s / 60
    raise InventoryError(
        f"{at}: cannot read duration {value!r}; use minutes (120), units (2d, 12h30m) or SLURM D-HH:MM:SS / HH:MM:SS"
    )


BUILTIN_INVENTORY = inventory_from_dict(
    {
        "partitions": {
            "gpu-t4": {"max_gpu": 8, "available_gpu_models": ["t4"]},
            "gpu-a100": {"max_gpu": 4, "available_gpu_models": ["a100"]},
            "gpu-h100": {"max_gpu": 2, "available_gpu_models": ["h100"]},
            "cpu": {"max_gpu": 0},
        },
        "gpu_models": {"gpu-a100": {"a100": "a100-40"}},
    },
    source="<built-in inventory, as profiles/slurm-gpu/partitions.yaml>",
)
"""Used when no site is configured: the shipped example's partitions, without limits."""
