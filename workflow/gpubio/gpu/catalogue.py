"""What each GPU model can do: VRAM, compute capability, relative speed and cost.

Speed and cost are relative to an NVIDIA T4 (= 1.0). Speed is rough mixed-precision
throughput for typical bio workloads (basecalling, Cellpose, rapids); cost is a rough
on-demand hourly price ratio. Both only rank models, so round figures are enough.

Naming rule (used for catalogue names and SLURM GRES types alike), case-insensitive:

1. an exact catalogue name wins (``"A100-80"``, ``"h100"``);
2. otherwise the name is read as ``<family>[sep]<memory>[g|gb]`` with an optional
   ``nvidia``/``tesla`` prefix: ``a100_40g``, ``A100-40GB``, ``nvidia-a100-80`` name the
   family member with that much VRAM;
3. a bare family name (``a100``) means the family's largest-VRAM member (A100-80).
   Where a site's bare ``a100`` is the 40 GB card, partitions.yaml says so in its
   ``gpu_models`` section (see :mod:`gpubio.gpu.inventory`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = [
    "BUILTIN_CATALOGUE",
    "Catalogue",
    "CatalogueError",
    "GpuModel",
    "load_catalogue",
]


class CatalogueError(ValueError):
    """A GPU model entry or name the catalogue cannot accept or resolve."""


@dataclass(frozen=True)
class GpuModel:
    """One GPU model. ``speed`` and ``cost`` are relative to a T4 (= 1.0)."""

    name: str
    vram_gb: float
    compute_capability: float
    speed: float
    cost: float

    @property
    def key(self) -> str:
        """Case-folded lookup key."""
        return self.name.lower()

    def describe(self) -> str:
        """Human-readable one-liner for messages."""
        return f"{self.name} ({_fmt(self.vram_gb)} GB, cc {self.compute_capability})"


_BUILTIN_MODELS = (
    GpuModel("T4", vram_gb=16, compute_capability=7.5, speed=1.0, cost=1.0),
    GpuModel("L4", vram_gb=24, compute_capability=8.9, speed=1.5, cost=1.4),
    GpuModel("A10", vram_gb=24, compute_capability=8.6, speed=1.8, cost=1.6),
    GpuModel("L40S", vram_gb=48, compute_capability=8.9, speed=3.0, cost=2.8),
    GpuModel("A100-40", vram_gb=40, compute_capability=8.0, speed=4.0, cost=4.0),
    GpuModel("A100-80", vram_gb=80, compute_capability=8.0, speed=4.3, cost=4.8),
    GpuModel("H100", vram_gb=80, compute_capability=9.0, speed=7.0, cost=9.0),
    GpuModel("H200", vram_gb=141, compute_capability=9.0, speed=8.0, cost=10.5),
)

# Fields a config entry sets; "name" comes from the entry's key.
_ENTRY_FIELDS = tuple(f.name for f in fields(GpuModel) if f.name != "name")

_NAME_RE = re.compile(
    r"^(?:nvidia[-_ ]?)?(?:tesla[-_ ]?)?"
    r"(?P<family>[a-z]+[0-9]+[a-z]*)"
    r"(?:[-_ ]?(?P<mem>[0-9]+)(?:gb|g)?)?$"
)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _split_name(name: str) -> tuple[str, int | None] | None:
    """``"a100_40g"`` -> ``("a100", 40)``; ``"h100"`` -> ``("h100", None)``."""
    m = _NAME_RE.match(name.strip().lower())
    if m is None:
        return None
    mem = m.group("mem")
    return m.group("family"), int(mem) if mem else None


class Catalogue(Mapping[str, GpuModel]):
    """GPU models by case-folded name, with GRES-type resolution."""

    def __init__(self, models: Iterable[GpuModel]):
        self._models: dict[str, GpuModel] = {}
        for model in models:
            self._models[model.key] = model

    def __getitem__(self, name: str) -> GpuModel:
        return self._models[name.strip().lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def __repr__(self) -> str:
        return f"Catalogue({', '.join(m.name for m in self._models.values())})"

    def resolve(self, name: str) -> GpuModel:
        """The model a catalogue name or GRES type means (see the module's naming rule).

        Raises CatalogueError naming ``name`` when nothing matches.
        """
        key = name.strip().lower()
        if key in self._models:
            return self._models[key]
        parsed = _split_name(key)
        if parsed is not None:
            family, mem = parsed
            members = [m for m in self._models.values() if _family(m) == family]
            if members and mem is None:
                # Bare family name: the largest member (rule 3 of the module doc).
                return max(members, key=lambda m: (m.vram_gb, m.speed))
            sized = [m for m in members if round(m.vram_gb) == mem]
            if sized:
                return sized[0]
        known = ", ".join(m.name for m in self._models.values())
        raise CatalogueError(
            f"GPU type {name!r} is not in the GPU catalogue (known: {known}). "
            f"Add it under config['gpu']['catalogue'] "
            f"(vram_gb, compute_capability, speed, cost), or map the GRES type to a "
            f"catalogue model in the partitions file's gpu_models section."
        )

    def with_overrides(
        self,
        overrides: Mapping[str, Any] | None,
        where: str = "config['gpu']['catalogue']",
    ) -> Catalogue:
        """A copy extended/overridden by ``{name: {vram_gb, compute_capability, speed, cost}}``.

        A new model needs all four fields; an existing one may set only some. Bad entries
        raise CatalogueError naming ``where`` and the key.
        """
        if not overrides:
            return Catalogue(self._models.values())
        if not isinstance(overrides, Mapping):
            raise CatalogueError(f"{where} must be a mapping of model name -> fields, got {type(overrides).__name__}")
        models = dict(self._models)
        for raw_name, entry in overrides.items():
            name = str(raw_name).strip()
            at = f"{where}[{raw_name!r}]"
            if not name:
                raise CatalogueError(f"{at}: model name is empty")
            if not isinstance(entry, Mapping):
                raise CatalogueError(f"{at} must be a mapping with {', '.join(_ENTRY_FIELDS)}, got {entry!r}")
            unknown = sorted(set(entry) - set(_ENTRY_FIELDS))
            if unknown:
                raise CatalogueError(
                    f"{at}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(_ENTRY_FIELDS)}"
                )
            values: dict[str, Any] = {str(k): _positive_number(v, f"{at}[{k!r}]") for k, v in entry.items()}
            base = models.get(name.lower())
            if base is None:
                missing = [k for k in _ENTRY_FIELDS if k not in values]
                if missing:
                    raise CatalogueError(
                        f"{at}: new GPU model is missing {', '.join(missing)} (needs {', '.join(_ENTRY_FIELDS)})"
                    )
                models[name.lower()] = GpuModel(name=name, **values)
            else:
                models[name.lower()] = replace(base, **values)
        return Catalogue(models.values())


def _family(model: GpuModel) -> str | None:
    parsed = _split_name(model.name)
    return parsed[0] if parsed else None


def _positive_number(value: Any, at: str) -> float:
    # bool is an int subclass; `speed: true` is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CatalogueError(f"{at} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise CatalogueError(f"{at} must be a positive number, got {value!r}")
    return float(value)


BUILTIN_CATALOGUE = Catalogue(_BUILTIN_MODELS)


def load_catalogue(overrides: Mapping[str, Any] | None = None) -> Catalogue:
    """The built-in catalogue, extended/overridden by ``config["gpu"]["catalogue"]``."""
    return BUILTIN_CATALOGUE.with_overrides(overrides)
