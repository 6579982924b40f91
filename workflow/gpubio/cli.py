"""`python -m gpubio <command>`: the commands the workflow's rules run (visible in `snakemake -n -p`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from gpubio.errors import UnusableInput

log = logging.getLogger("gpubio")

# Each module's own subcommands: a module defines register(subparsers) and keeps its
# imports inside the command functions, so `--help` stays fast and light.
DOMAIN_COMMANDS = (
    "gpubio.gpu.tool",  # first, and standard library only: vendor containers run it alone
    "gpubio.genomics.commands",
    "gpubio.transcriptomics.commands",
    "gpubio.imaging.commands",
    "gpubio.histopathology.commands",
)


def limit_threads(threads: int) -> None:
    """Pin BLAS/OpenMP/numba/torch pools to the rule's threads; must run before numpy is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    # idle OpenMP threads sleep instead of spinning: on a busy 2-core node spinning made torch steps ~4x slower
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "numba" in sys.modules:  # its pool size is fixed once launched: only lower the count in use
        numba = sys.modules["numba"]
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _demo_data(args) -> None:
    from gpubio.demo import make_demo, write_sheets

    rows = make_demo(args.out, seed=args.seed)
    if args.sheets:
        write_sheets(rows, args.sheets)
    print(f"demo data written to {args.out}" + (f", sample sheets to {args.sheets}" if args.sheets else ""))


def _plan(args) -> None:
    from gpubio.config import project_file
    from gpubio.gpu import build_site
    from gpubio.gpu.plan import (
        compare_totals,
        configfiles,
        dry_run,
        format_plan,
        merged_config,
        parse_dry_run,
        partition_totals,
        plan_table,
        with_declared,
        write_plan,
    )

    # absolute: the dry-run may start elsewhere (--invoked-in), where the user's own relative
    # paths among snakemake_args hold
    directory = os.path.abspath(args.directory)
    invoked_in = args.invoked_in or os.getcwd()
    overlays = [args.configfile] + [os.path.join(invoked_in, f) for f in configfiles(args.snakemake_args)]
    # the Snakefile's own `configfile:` first, then every --configfile, as Snakemake merges them
    base = Path(directory) / "config" / "config.yaml"
    gpu = merged_config(base, overlays).get("gpu") or {}
    partitions = args.partitions or gpu.get("partitions", "profiles/slurm-gpu/partitions.yaml")
    needs = gpu.get("needs", "config/gpu_needs.yaml")
    calibrated = bool(needs) and (Path(directory) / needs).is_file()
    site = build_site(
        project_file(partitions, directory) or partitions,
        gpu.get("catalogue"),
        needs_file=Path(directory) / needs if calibrated else None,
        prices=gpu.get("prices"),
        objective=gpu.get("objective"),
        spread=bool(gpu.get("spread")),
    )
    extra = ["--configfile", os.path.abspath(args.configfile), *args.snakemake_args]
    snakefile = os.path.abspath(args.snakefile)
    try:
        table = plan_table(parse_dry_run(dry_run(snakefile, directory, extra, cwd=args.invoked_in)), site, directory)
        if calibrated:  # show the declared plan beside it
            declared = dry_run(snakefile, directory, extra, cwd=args.invoked_in, declared_needs=True)
            table = with_declared(table, plan_table(parse_dry_run(declared), site, directory))
    except RuntimeError as error:  # Snakemake's own message follows the line
        sys.exit(f"gpubio plan: {error}")
    if args.out:
        write_plan(table, args.out, site)
    print(format_plan(table, partition_totals(table, site), site))
    if calibrated:
        print("\n" + compare_totals(table, "cost" if site.economics.prices else "relative cost"))


def _gpu_usage_report(args) -> None:
    import json

    from gpubio.gpu import build_site
    from gpubio.gpu.usage_report import parse_prices, write_usage_report

    try:
        prices = parse_prices(args.price)
    except ValueError as error:
        sys.exit(f"gpubio gpu-usage-report: {error}")
    catalogue = json.loads(args.catalogue) if args.catalogue else None
    site = build_site(args.partitions, catalogue, prices=prices) if args.partitions else None
    table = write_usage_report(
        args.records, args.out_tsv, args.out_models, args.out_png, site, args.sample_folders, args.plan
    )
    print(f"{len(table)} GPU job record(s); flagged: {int((table['flags'] != '').sum())}")


def _calibrate(args) -> None:
    from gpubio.gpu.calibrate import write_needs

    needs = write_needs(args.records, args.out, args.margin)
    print(f"wrote {args.out}: calibrated GPU needs of {len(needs)} rule(s)")
    for rule, need in needs.items():
        size = need.max_input_mb
        vram = f"{need.vram.intercept:.2f} GB" + (f" + {need.vram.slope:.4f} GB/MB" if need.vram.slope else "")
        print(
            f"  {rule}: {vram} ({need.records} records, {need.oom_records} out of memory"
            + (f", inputs up to {size:g} MB)" if size is not None else ")")
        )


def _device_info(args) -> None:
    """Which device this job sees: what SLURM or the local pinning gave it, and torch's view."""
    import json
    import socket

    from gpubio.atomic import write_text_atomic
    from gpubio.gpu.job import current_job

    info = {
        "host": socket.gethostname(),
        "slurm_job_partition": os.environ.get("SLURM_JOB_PARTITION"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "backend": "cuda" if current_job().devices else "cpu",
        "devices": current_job().devices,
    }
    try:
        import torch

        info["torch_cuda"] = torch.cuda.is_available()
        info["torch_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        info["torch_cuda"] = None
    text = json.dumps(info, indent=2) + "\n"
    if args.out:
        write_text_atomic(args.out, text)
    print(text, end="")


def _check_yaml(args) -> None:
    from gpubio.config import yaml_syntax_problem

    problems = [problem for problem in map(yaml_syntax_problem, args.files) if problem]
    missing = [f"{path}: does not exist" for path in args.files if not Path(path).is_file()]
    for line in missing + problems:
        print(f"gpubio: {line}", file=sys.stderr)
    if missing or problems:
        sys.exit(1)
    print(f"{len(args.files)} file(s) are valid YAML")


def _qc_summary(args) -> None:
    from gpubio.qc_summary import write_qc_summary

    write_qc_summary(args.domain, args.qc, args.out_tsv, args.out_png, args.tables)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpubio", description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for BLAS/OpenMP/torch")
    parser.add_argument(
        "--gpus", type=int, default=0, help="GPUs this step may use (the rule's resources.gpu); 0 = CPU step"
    )
    parser.add_argument(
        "--require-gpu", action="store_true", help="fail when --gpus > 0 and no GPU is found (config gpu.require)"
    )
    parser.add_argument("--usage", help="write this step's GPU usage record (JSON) here, also when it fails")
    parser.add_argument("--usage-job", default="", help="what the plan gave the job: the rule's resources.gpu_usage")
    sub = parser.add_subparsers(dest="command", required=True)

    for module in DOMAIN_COMMANDS:
        try:
            importlib.import_module(module).register(sub)
        except ImportError as error:  # a vendor container (dorado, pbrun) has the standard library only
            log.debug("commands of %s unavailable here: %s", module, error)

    p = sub.add_parser("demo-data", help="write the synthetic demo data set with planted truth")
    p.add_argument("--out", default="resources/demo")
    p.add_argument("--sheets", help="also write sample sheets (genomics/transcriptomics/imaging.tsv) here")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("plan", help="where every job of the DAG goes: GPU model, partition, GPU-hours, cost")
    p.add_argument("--snakefile", default="Snakefile")
    p.add_argument("--directory", default=".")
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--partitions", help="the partitions file (default: gpu.partitions of the config)")
    p.add_argument("--invoked-in", help="run the dry-run from this directory (where the snakemake_args were typed)")
    p.add_argument(
        "--out", help="also write the table as TSV (and <out>.partitions.tsv, <out>.samples.tsv with the totals)"
    )
    p.add_argument("snakemake_args", nargs="*", help="extra snakemake arguments, after --")
    p.set_defaults(func=_plan)

    p = sub.add_parser("gpu-usage-report", help="planned against measured GPU use, from the jobs' usage records")
    p.add_argument("records", nargs="+", help="directories (or files) with *.gpu.json records")
    p.add_argument("--partitions", help="the site's partitions file (for the relative cost of each GPU)")
    p.add_argument("--plan", help="results/gpu_plan.tsv: each job's expected GPU-hours and cost beside its use")
    p.add_argument(
        "--price", action="append", metavar="MODEL=PRICE", help="gpu.prices: price of one GPU-hour (repeat per model)"
    )
    p.add_argument("--catalogue", help="gpu.catalogue as JSON: the GPU models gpu.prices may name beyond the built-in")
    p.add_argument(
        "--sample-folders",
        nargs="*",
        metavar="FOLDER",
        help="the per-sample record folders to read (genomics/s1, genomics/runs/RUN): records in other folders "
        "below a module's own (samples no longer in a sheet) are left out; default: read every record",
    )
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-models", required=True)
    p.add_argument("--out-png", required=True)
    p.set_defaults(func=_gpu_usage_report)

    p = sub.add_parser(
        "calibrate", help="fit each rule's GPU need from the usage records of past runs; writes config/gpu_needs.yaml"
    )
    p.add_argument("records", nargs="+", help="result directories (or record files) to read *.gpu.json from")
    p.add_argument("--out", default="config/gpu_needs.yaml")
    p.add_argument("--margin", type=float, default=0.2, help="safety margin over the measured upper bound")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("device-info", help="report the device(s) this job sees (SLURM, local pinning, torch)")
    p.add_argument("--out")
    p.set_defaults(func=_device_info)

    p = sub.add_parser(
        "check-yaml", help="name the file, line and column of a YAML syntax error (config files, overlays)"
    )
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_check_yaml)

    p = sub.add_parser("qc-summary", help="one table and figure per domain from QC JSON files")
    p.add_argument("--domain", required=True, choices=["genomics", "transcriptomics", "imaging"])
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-png", required=True)
    p.add_argument(
        "--tables", nargs="*", default=[], help="per-sample TSV tables (a 'sample' column) whose columns join the table"
    )
    p.add_argument("qc", nargs="+")
    p.set_defaults(func=_qc_summary)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    limit_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpubio %(levelname)s %(message)s")
    try:
        run_step(args)
    except UnusableInput as error:  # an input, model or sample the step cannot use: one line
        sys.exit(f"gpubio: {args.command}: {error}")


def run_step(args) -> None:
    if args.gpus <= 0:  # a CPU step (also a GPU-capable rule placed on the CPU): nothing to record
        args.func(args)
        return
    from gpubio.gpu.devices import DeviceError, pin_gpus
    from gpubio.gpu.job import GpuUnusable, JobDevice, set_current_job
    from gpubio.gpu.usage import parse_job_spec, record_usage

    try:
        with pin_gpus(args.gpus, strict=args.require_gpu) as devices:
            job = parse_job_spec(args.usage_job)
            with record_usage(args.usage, job, args.gpus, devices) as record:
                set_current_job(JobDevice(args.gpus, devices, args.require_gpu, record))
                args.func(args)
    except (DeviceError, GpuUnusable) as error:
        sys.exit(f"gpubio: {args.command}: {error}; this step requires a GPU (gpu.require: true in config.yaml)")


if __name__ == "__main__":
    main()
