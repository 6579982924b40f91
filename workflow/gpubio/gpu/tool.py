"""`python -m gpubio --gpus N tool-on-device`: run an external tool (dorado, ...) with its GPU
options when this job holds a GPU its driver lists, else with its CPU options.

Standard library only: it runs inside vendor containers (`python -S`), which have neither
PyYAML nor the science stack.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("gpubio")


def tool_args(gpu_args: str, cpu_args: str, devices: list[int]) -> list[str]:
    """The device options of an external tool for what the CLI pinned (GPUs or none)."""
    import shlex

    return shlex.split(gpu_args if devices else cpu_args)


def run_tool(command: list[str], gpu_args: str, cpu_args: str, stdout: str | None, devices: list[int]) -> int:
    """Run an external tool with its GPU or CPU options appended; stdout to a file, atomically."""
    import shlex
    import subprocess

    from gpubio.atomic import atomic_path

    full = list(command) + tool_args(gpu_args, cpu_args, devices)
    where = (
        f"GPU(s) {devices} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})" if devices else "the CPU"
    )
    log.info("running %s on %s: %s", command[0], where, shlex.join(full))
    from gpubio.gpu.devices import held_lock_fds

    # the tool holds this job's GPU locks too: they stay held while it runs, even if we die
    if stdout is None:
        return subprocess.run(full, pass_fds=held_lock_fds()).returncode
    with atomic_path(stdout) as tmp, open(tmp, "wb") as fh:
        code = subprocess.run(full, stdout=fh, pass_fds=held_lock_fds()).returncode
        if code:
            raise SystemExit(f"gpubio: {command[0]} exited with status {code}")
    return code


def usable_devices(tool: str) -> list[int]:
    """The job's GPUs if the driver lists them (the tool uses the driver directly), else []
    with one line saying why; in require mode that is an error (gpubio.gpu.job)."""
    from gpubio.gpu.devices import nvidia_smi_sees
    from gpubio.gpu.job import current_job

    job = current_job()
    unusable = nvidia_smi_sees(job.devices) if job.devices else None
    if unusable:
        job.use_cpu(tool, unusable)
        return []
    return job.devices


def _tool_on_device(args) -> None:
    command = args.tool[1:] if args.tool[:1] == ["--"] else args.tool
    if not command:
        sys.exit("gpubio tool-on-device: give the tool's command after --")
    try:
        code = run_tool(command, args.gpu_args, args.cpu_args, args.stdout, usable_devices(command[0]))
    except FileNotFoundError:
        sys.exit(
            f"gpubio: {command[0]} is not on PATH; run with its container (--software-deployment-method "
            "apptainer) or its site module (--software-deployment-method env-modules)"
        )
    if code:
        sys.exit(code)


def register(sub) -> None:
    p = sub.add_parser(
        "tool-on-device", help="run an external tool with its GPU options when this job holds GPUs, else its CPU ones"
    )
    p.add_argument("--gpu-args", required=True, help="options appended when GPUs are pinned, e.g. '--device cuda:all'")
    p.add_argument("--cpu-args", required=True, help="options appended on the CPU path, e.g. '-x cpu'")
    p.add_argument("--stdout", help="write the tool's standard output to this file (atomically)")
    p.add_argument("tool", nargs=argparse.REMAINDER, metavar="command", help="-- tool and its arguments")
    p.set_defaults(func=_tool_on_device)
