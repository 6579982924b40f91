"""Shared by the test doubles of dorado, pbrun, run_deepvariant and run_clair3.sh.

The doubles parse the same options as the real tools (argparse with the real flag names; an
unknown flag or a bad value fails like the tool would) and write small valid outputs. Signal
encoding for the basecaller double: a POD5 read's signal is [barcode number, base codes ...]
with A, C, G, T = 0..3 and barcode 0 meaning none, so a test decides what "basecalling" yields.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import uuid
from pathlib import Path

BASES = "ACGT"
DORADO_VERSION = "0.9.6+double"


def fail(tool: str, message: str, code: int = 1):
    print(f"[{tool} double] error: {message}", file=sys.stderr)
    sys.exit(code)


class Parser(argparse.ArgumentParser):
    """argparse that exits like the tools do (status 1, message on stderr) and allows no abbreviations."""

    def __init__(self, prog: str, **kwargs):
        super().__init__(prog=prog, allow_abbrev=False, **kwargs)

    def error(self, message):
        fail(self.prog, message)


def log_call(tool: str) -> None:
    """Append the argument vector to $GPUBIO_DOUBLES_LOG (tests read what was run)."""
    path = os.environ.get("GPUBIO_DOUBLES_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(
                "\t".join([tool, *sys.argv[1:], f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}"])
                + "\n"
            )


def visible_gpus() -> list[str]:
    return [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]


def require_file(tool: str, path: str, what: str) -> None:
    if not Path(path).exists():
        fail(tool, f"{what} {path} does not exist")


# --------------------------------------------------------------------------- POD5


def run_info(run_id: str, flow_cell: str = "PAW00001", sample: str = "lib1"):
    import pod5

    start = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
    return pod5.RunInfo(
        acquisition_id=run_id,
        acquisition_start_time=start,
        adc_max=2047,
        adc_min=-2048,
        context_tags={},
        experiment_name="exp1",
        flow_cell_id=flow_cell,
        flow_cell_product_code="FLO-PRO114M",
        protocol_name="sequencing/sequencing_PRO114_DNA_e8_2_400K:FLO-PRO114M:SQK-NBD114-24",
        protocol_run_id=f"{run_id}-protocol",
        protocol_start_time=start,
        sample_id=sample,
        sample_rate=5000,
        sequencing_kit="sqk-nbd114-24",
        sequencer_position="1A",
        sequencer_position_type="PromethION",
        software="MinKNOW",
        system_name="PC24A001",
        system_type="PromethION 24",
        tracking_id={"run_id": run_id},
    )


def write_pod5(path: str | Path, reads: list[tuple[str, int]], run_id: str = "0a1b2c3d4e5f6a7b") -> list[str]:
    """A real POD5 file; each read's signal encodes (sequence, barcode number). Returns read ids."""
    import numpy as np
    import pod5

    info = run_info(run_id)
    ids = []
    with pod5.Writer(str(path)) as writer:
        for i, (seq, barcode) in enumerate(reads):
            read_id = uuid.uuid5(uuid.NAMESPACE_URL, f"pod5-double/{run_id}/{i}")
            signal = np.array([barcode] + [BASES.index(b) for b in seq], dtype=np.int16)
            writer.add_read(
                pod5.Read(
                    read_id=read_id,
                    pore=pod5.Pore(channel=i % 512 + 1, well=1 + i % 4, pore_type="not_set"),
                    calibration=pod5.Calibration(0.0, 1.0),
                    read_number=i,
                    start_sample=i * 20000,
                    median_before=200.0,
                    end_reason=pod5.EndReason(pod5.EndReasonEnum.SIGNAL_POSITIVE, False),
                    run_info=info,
                    signal=signal,
                )
            )
            ids.append(str(read_id))
    return ids


def decode_signal(signal) -> tuple[str, int]:
    barcode = int(signal[0])
    return "".join(BASES[int(v)] for v in signal[1:]), barcode


# --------------------------------------------------------------------------- calls


def call_variants(tool: str, bam: str, reference: str, out: str, sample: str | None = None) -> None:
    """Real calls with bcftools (pysam), written as VCF (.vcf) or bgzipped VCF (.vcf.gz) + .tbi."""
    import tempfile

    import pysam
    import pysam.bcftools as bcftools

    require_file(tool, f"{bam}.bai", "BAM index")
    require_file(tool, f"{reference}.fai", "reference index")
    with tempfile.TemporaryDirectory() as tmp:
        pileup, calls = f"{tmp}/p.bcf", f"{tmp}/c.vcf.gz"
        bcftools.mpileup("-f", reference, "-a", "FORMAT/AD,FORMAT/DP", "-Ou", "-o", pileup, bam, catch_stdout=False)
        bcftools.call("-m", "-v", "-Oz", "-o", calls, pileup, catch_stdout=False)
        if sample:
            Path(f"{tmp}/s.txt").write_text(f"{sample}\n")
            bcftools.reheader("-s", f"{tmp}/s.txt", "-o", f"{tmp}/r.vcf.gz", calls, catch_stdout=False)
            calls = f"{tmp}/r.vcf.gz"
        if out.endswith(".gz"):
            os.replace(calls, out)
            pysam.tabix_index(out, preset="vcf", force=True)
        else:
            bcftools.view("-Ov", "-o", out, calls, catch_stdout=False)
