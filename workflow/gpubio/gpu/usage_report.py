"""Planned against measured: the report page of what GPU jobs really used.

One row per job (its last attempt and any failed ones): the GPU model the plan gave it,
the device it ran on, measured peak VRAM and headroom, GPU-hours and relative cost used
(measured wall time x GPUs) against planned (runtime limit x GPUs), and beside them the
plan's expected GPU-hours (results/gpu_plan.tsv) and, with gpu.prices, the cost measured,
expected and reserved. Flags point at the two ways a declared need is wrong: a job that
used under a quarter of its GPU's memory (a cheaper GPU would do) and a job that ran out of
memory and was retried (the need was too low); a retry after any other failure says so. A
plot per rule shows peak VRAM against input size with the planned need over it.
"""

from __future__ import annotations

from typing import Any

from .usage import UsageRecord

SMALL_USE_SHARE = 0.25
COLUMNS = [
    "rule",
    "job",
    "attempt",
    "backend",
    "planned_gpu_model",
    "planned_partition",
    "device_model",
    "device_vram_gb",
    "peak_vram_gb",
    "headroom_gb",
    "used_share",
    "mean_utilisation",
    "input_size_mb",
    "planned_vram_gb",
    "gpus",
    "wall_s",
    "gpu_hours_used",
    "relative_cost_used",
    "planned_gpu_hours",
    "planned_relative_cost",
    "expected_gpu_hours",
    "price_per_gpu_hour",
    "cost_used",
    "expected_cost",
    "reserved_cost",
    "flags",
]


def gpu_prices_option(gpu_settings: dict) -> str:
    """``--price MODEL=PRICE ... --catalogue JSON`` for gpu-usage-report (quoted shell words):
    gpu.prices and the catalogue models they may name; "" without prices."""
    import json

    from gpubio.shell import quote_option

    prices = gpu_settings.get("prices") or {}
    if not prices:
        return ""
    words = [quote_option("--price", f"{model}={price}", joined=True) for model, price in prices.items()]
    catalogue = gpu_settings.get("catalogue") or {}
    return " ".join(words + ([quote_option("--catalogue", json.dumps(catalogue))] if catalogue else []))


def parse_prices(values: list[str] | None) -> dict[str, float]:
    """``["T4=0.53", ...]`` (gpu-usage-report --price) as {model: price}."""
    prices = {}
    for value in values or []:
        model, sep, price = value.rpartition("=")
        if not sep or not model:
            raise ValueError(f"--price {value!r}: give MODEL=PRICE, e.g. T4=0.53")
        prices[model] = float(price)
    return prices


def _model_cost(record: UsageRecord, site: Any) -> float | None:
    """Relative hourly cost of the GPU the job was placed on (the site's pool for its GRES type)."""
    if site is None or not record.planned_gpu_model:
        return None
    from .placement import gpu_pools

    for pool in gpu_pools(site.inventory, site.catalogue):
        if pool.gres_type == record.planned_gpu_model and (
            not record.planned_partition or pool.partition.name == record.planned_partition
        ):
            return pool.model.cost
    try:
        return site.catalogue.resolve(record.planned_gpu_model).cost
    except ValueError:
        return None


def _price(record: UsageRecord, site: Any) -> float | None:
    """gpu.prices of the GPU the job ran on (its device, else the GPU type it was placed on)."""
    if site is None or not site.economics.prices:
        return None
    from .local_site import catalogue_model

    model = catalogue_model(record.device_model, record.device_vram_gb, site.catalogue) if record.device_model else None
    if model is None and record.planned_gpu_model:
        try:
            model = site.catalogue.resolve(record.planned_gpu_model)
        except ValueError:
            model = None
    return site.economics.price(model)


def flags(record: UsageRecord) -> list[str]:
    out = []
    if record.oom:
        out.append("out of memory")
    if record.attempt > 1 and record.retry_after and record.retry_after != "oom":
        out.append(f"retried (attempt {record.attempt}) after a failure that was not GPU out-of-memory: same GPU class")
    elif record.attempt > 1:
        out.append(f"retried (attempt {record.attempt}): declared need too low")
    if (
        record.backend == "cuda"
        and record.peak_vram_gb is not None
        and record.device_vram_gb
        and record.peak_vram_gb < SMALL_USE_SHARE * record.device_vram_gb
    ):
        out.append("used < 1/4 of GPU memory: a cheaper GPU would do")
    if record.gpus and record.backend == "cpu":
        out.append(f"ran on the CPU ({record.reason or 'no GPU'})")
    return out


def usage_table(records: list[UsageRecord], site: Any = None, plan: Any = None):
    """One row per record; ``plan``: results/gpu_plan.tsv as a table, for each job's expected
    GPU-hours and cost."""
    import pandas as pd

    planned = {}
    if plan is not None and len(plan):
        planned = {(r.rule, r.wildcards): r for r in plan.itertuples()}
    rows = []
    for r in records:
        on_gpu = r.backend == "cuda"
        gpu_hours = r.gpus * r.wall_s / 3600 if on_gpu else 0.0
        cost = _model_cost(r, site)
        price = _price(r, site)
        in_plan = planned.get((r.rule, r.job))
        planned_hours = r.gpus * r.planned_runtime_min / 60 if r.planned_runtime_min else None
        headroom = (
            r.device_vram_gb - r.peak_vram_gb if r.device_vram_gb is not None and r.peak_vram_gb is not None else None
        )
        rows.append(
            {
                "rule": r.rule,
                "job": r.job,
                "attempt": r.attempt,
                "backend": r.backend,
                "planned_gpu_model": r.planned_gpu_model,
                "planned_partition": r.planned_partition,
                "device_model": r.device_model,
                "device_vram_gb": r.device_vram_gb,
                "peak_vram_gb": r.peak_vram_gb,
                "headroom_gb": round(headroom, 3) if headroom is not None else None,
                "used_share": round(r.peak_vram_gb / r.device_vram_gb, 3) if headroom is not None else None,
                "mean_utilisation": r.mean_utilisation,
                "input_size_mb": r.input_size_mb,
                "planned_vram_gb": r.planned_vram_gb,
                "gpus": r.gpus,
                "wall_s": r.wall_s,
                "gpu_hours_used": round(gpu_hours, 5),
                "relative_cost_used": round(gpu_hours * cost, 5) if cost is not None else None,
                "planned_gpu_hours": round(planned_hours, 5) if planned_hours is not None else None,
                "planned_relative_cost": (
                    round(planned_hours * cost, 5) if planned_hours is not None and cost is not None else None
                ),
                "expected_gpu_hours": in_plan.expected_gpu_hours if in_plan is not None else None,
                "price_per_gpu_hour": price,
                "cost_used": round(gpu_hours * price, 5) if price is not None else None,
                "expected_cost": in_plan.expected_cost if in_plan is not None and price is not None else None,
                "reserved_cost": in_plan.reserved_cost if in_plan is not None and price is not None else None,
                "flags": "; ".join(flags(r)),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["rule", "job", "attempt"], kind="stable", ignore_index=True)


def model_summary(table):
    """Per planned GPU model: jobs, measured against planned GPU-hours and cost, flags."""
    import pandas as pd

    if table.empty:
        return pd.DataFrame(columns=["planned_gpu_model", "jobs", "gpu_hours_used", "planned_gpu_hours"])
    key = table["planned_gpu_model"].fillna("cpu")
    summary = (
        table.assign(model=key)
        .groupby("model", sort=True)
        .agg(
            jobs=("rule", "size"),
            on_gpu=("backend", lambda b: int((b == "cuda").sum())),
            peak_vram_gb=("peak_vram_gb", "max"),
            median_used_share=("used_share", "median"),
            gpu_hours_used=("gpu_hours_used", "sum"),
            planned_gpu_hours=("planned_gpu_hours", "sum"),
            expected_gpu_hours=("expected_gpu_hours", "sum"),
            relative_cost_used=("relative_cost_used", "sum"),
            planned_relative_cost=("planned_relative_cost", "sum"),
            cost_used=("cost_used", "sum"),
            expected_cost=("expected_cost", "sum"),
            could_be_cheaper=("flags", lambda f: int(f.str.contains("cheaper").sum())),
            out_of_memory=("flags", lambda f: int(f.str.contains("out of memory|retried").sum())),
        )
    )
    return summary.reset_index().rename(columns={"model": "planned_gpu_model"})


def plot_usage(table, out_png: str) -> None:
    """Peak VRAM against input size, one panel per rule, the planned need drawn over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path

    measured = table[table["peak_vram_gb"].notna()]
    rules = sorted(set(table["rule"])) or ["(no GPU jobs)"]
    fig, axes = plt.subplots(1, len(rules), figsize=(4.2 * len(rules), 3.6), squeeze=False)
    for ax, rule in zip(axes[0], rules):
        rows = table[table["rule"] == rule].sort_values("input_size_mb")
        points = measured[measured["rule"] == rule]
        if not points.empty:
            ax.scatter(points["input_size_mb"], points["peak_vram_gb"], s=18, label="measured peak")
            retried = points[points["flags"].str.contains("out of memory|retried")]
            ax.scatter(
                retried["input_size_mb"],
                retried["peak_vram_gb"],
                s=60,
                facecolors="none",
                edgecolors="red",
                label="OOM / retried",
            )
        planned = rows[rows["planned_vram_gb"].notna()]
        if not planned.empty:
            ax.plot(planned["input_size_mb"], planned["planned_vram_gb"], "k--", label="declared need")
        if points.empty:
            ax.text(0.5, 0.5, "no GPU measurement\n(CPU path)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(rule, fontsize=10)
        ax.set_xlabel("input size (MB)")
        ax.set_ylabel("GPU memory (GB)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_usage_report(
    record_paths: list[str],
    out_tsv: str,
    out_models: str,
    out_png: str,
    site: Any = None,
    sample_folders: list[str] | None = None,
    plan_tsv: str | None = None,
):
    """The report of the records under ``record_paths``; with ``sample_folders``, only the
    samples (and runs) in the sheets now (:func:`gpubio.gpu.usage.read_records`); with
    ``plan_tsv``, each job's expected GPU-hours and cost beside what it used."""
    import pandas as pd

    from gpubio.atomic import atomic_path

    from .usage import read_records

    plan = pd.read_csv(plan_tsv, sep="\t", keep_default_na=False) if plan_tsv else None
    table = usage_table(read_records(record_paths, sample_folders), site, plan)
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_models) as tmp:
        model_summary(table).to_csv(tmp, sep="\t", index=False)
    plot_usage(table, out_png)
    return table
