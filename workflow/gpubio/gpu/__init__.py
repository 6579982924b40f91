"""GPU placement: catalogue (what GPUs can do), inventory (what the site has),
placement (where one job goes), balance (where all jobs go), devices (local pinning).

Start-up builds the site once (``build_site``); rules declare
``resources: **gpu_resources(SITE, "rule", vram_gb=..., policy=...)``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .catalogue import (
    BUILTIN_CATALOGUE,
    Catalogue,
    CatalogueError,
    GpuModel,
    load_catalogue,
)
from .inventory import (
    BUILTIN_INVENTORY,
    Inventory,
    InventoryError,
    SitePartition,
    inventory_from_dict,
    load_inventory,
)
from .placement import (
    GpuNeed,
    GpuPool,
    Placement,
    PlacementError,
    Site,
    build_site,
    builtin_site,
    check_declared_needs,
    cpu_resources,
    gpu_pools,
    gpu_resources,
    input_files_mb,
    place_gpu_job,
    planned_job_problems,
    pool_fits,
)

if TYPE_CHECKING:
    from .balance import (
        BalancedPlan,
        BalanceJob,
        estimate_assignment,
        plan_balanced,
        schedule_makespan,
    )
    from .devices import (
        DeviceError,
        DeviceTimeout,
        acquire_gpus,
        detect_gpu_count,
        pin_gpus,
    )

# Loaded on first use: balance needs pulp, and eager import of devices would make
# `python -m gpubio.gpu.devices` warn about a module imported twice.
_LAZY = {
    "BalanceJob": "balance",
    "BalancedPlan": "balance",
    "BalancedGroup": "balance",
    "estimate_assignment": "balance",
    "plan_balanced": "balance",
    "schedule_makespan": "balance",
    "DeviceError": "devices",
    "DeviceTimeout": "devices",
    "acquire_gpus": "devices",
    "detect_gpu_count": "devices",
    "pin_gpus": "devices",
}

__all__ = [
    "BUILTIN_CATALOGUE",
    "BUILTIN_INVENTORY",
    "BalanceJob",
    "BalancedGroup",
    "BalancedPlan",
    "Catalogue",
    "CatalogueError",
    "DeviceError",
    "DeviceTimeout",
    "GpuModel",
    "GpuNeed",
    "GpuPool",
    "Inventory",
    "InventoryError",
    "Placement",
    "PlacementError",
    "Site",
    "SitePartition",
    "acquire_gpus",
    "check_declared_needs",
    "build_site",
    "builtin_site",
    "cpu_resources",
    "detect_gpu_count",
    "estimate_assignment",
    "gpu_pools",
    "gpu_resources",
    "input_files_mb",
    "inventory_from_dict",
    "load_catalogue",
    "load_inventory",
    "pin_gpus",
    "place_gpu_job",
    "plan_balanced",
    "planned_job_problems",
    "pool_fits",
    "schedule_makespan",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
