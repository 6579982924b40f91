"""Variant calling with bcftools (embedded in pysam) and the common finishing step of every
caller: normalise against the reference, flag records under the QUAL threshold, bgzip, index."""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from gpubio.genomics.inputs import quiet_htslib

log = logging.getLogger("gpubio")

# bcftools mpileup presets per platform (bcftools >= 1.20; 'ont' alone skips indels)
MPILEUP_PRESETS = {"illumina": "illumina", "ont": "ont-sup-1.20"}
LOW_QUAL = "LowQual"


def _bcftools(command: str, *args: str) -> None:
    import pysam.bcftools

    log.info("bcftools %s %s", command, shlex.join(args))
    getattr(pysam.bcftools, command)(*args, catch_stdout=False)


def call_bcftools(bam: str, reference: str, platform: str, out: str, threads: int = 1, extra: str = "") -> None:
    """bcftools mpileup | call -mv into a bgzipped VCF (raw calls, all QUALs)."""
    from gpubio.atomic import atomic_path

    with atomic_path(out) as tmp:
        pileup = f"{tmp}.pileup.bcf"
        try:
            _bcftools(
                "mpileup",
                "-f",
                reference,
                "-X",
                MPILEUP_PRESETS[platform],
                "-a",
                "FORMAT/AD,FORMAT/DP",
                "--threads",
                str(threads),
                *shlex.split(extra),
                "-Ou",
                "-o",
                pileup,
                bam,
            )
            _bcftools("call", "-m", "-v", "--threads", str(threads), "-Oz", "-o", str(tmp), pileup)
        finally:
            Path(pileup).unlink(missing_ok=True)


def finish_calls(raw: str, reference: str, sample: str, min_qual: float, out: str, threads: int = 1) -> dict:
    """Normalise (left-align, split multi-allelics, check REF), mark QUAL < min_qual as LowQual,
    name the sample, sort, bgzip and tabix-index. Returns PASS / LowQual counts."""
    import shutil
    import tempfile

    import pysam

    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        _bcftools(
            "norm",
            "-f",
            reference,
            "-m",
            "-any",
            "-c",
            "w",
            "--threads",
            str(threads),
            "-Oz",
            "-o",
            str(work / "norm.vcf.gz"),
            raw,
        )
        _bcftools(
            "filter",
            "-s",
            LOW_QUAL,
            "-e",
            f"QUAL<{min_qual:g}",
            "-Oz",
            "-o",
            str(work / "filtered.vcf.gz"),
            str(work / "norm.vcf.gz"),
        )
        source = work / "filtered.vcf.gz"
        with quiet_htslib(), pysam.VariantFile(str(source)) as vcf:  # no index: none needed
            names = list(vcf.header.samples)
        if names != [sample]:
            if len(names) != 1:
                raise ValueError(f"{raw}: expected one sample, found {names}")
            (work / "samples.txt").write_text(f"{names[0]} {sample}\n")
            _bcftools("reheader", "-s", str(work / "samples.txt"), "-o", str(work / "renamed.vcf.gz"), str(source))
            source = work / "renamed.vcf.gz"
        upper = work / "upper.vcf.gz"
        upper_case_alleles(str(source), str(upper))
        final = work / "final.vcf.gz"
        _bcftools("sort", "-Oz", "-o", str(final), str(upper))
        _bcftools("index", "-t", "-o", f"{final}.tbi", str(final))
        os.replace(final, out_path)
        os.replace(f"{final}.tbi", f"{out_path}.tbi")  # after the VCF: the index is the newer file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = vcf_counts(out)
    log.info(
        "%s: %d PASS (%d SNPs, %d indels), %d LowQual (QUAL < %g)",
        sample,
        counts["pass"],
        counts["pass_snps"],
        counts["pass_indels"],
        counts["low_qual"],
        min_qual,
    )
    return counts


def upper_case_alleles(vcf_in: str, vcf_out: str) -> int:
    """Copy a VCF with REF/ALT in upper case: callers copy soft-masked (lower-case) reference
    bases into REF, which VCF tools do not expect. Returns the records changed."""
    import pysam

    changed = 0
    with quiet_htslib():  # read through, never by region: its missing index does not matter
        fh = pysam.VariantFile(vcf_in)
    with fh, pysam.VariantFile(vcf_out, "wz", header=fh.header) as out:
        for rec in fh:
            alleles = tuple(a.upper() if set(a) <= NUCLEOTIDES else a for a in rec.alleles)
            if alleles != rec.alleles:
                rec.alleles = alleles
                changed += 1
            out.write(rec)
    if changed:
        log.info("%d records had lower-case (soft-masked) REF/ALT; written in upper case", changed)
    return changed


NUCLEOTIDES = set("ACGTNacgtn")


def variant_type(ref: str, alt: str) -> str:
    if len(ref) == len(alt) == 1:
        return "snp"
    if len(ref) == len(alt):
        return "mnp"
    return "indel"


def vcf_records(vcf: str) -> list[dict]:
    """chrom, pos, ref, alt, qual, filter, type, genotype of every ALT allele."""
    import pysam

    rows = []
    with pysam.VariantFile(vcf) as fh:
        for rec in fh:
            gt = rec.samples[0].get("GT") if rec.samples else None
            flt = ";".join(rec.filter) or "PASS"
            for alt in rec.alts or ():
                rows.append(
                    {
                        "chrom": rec.chrom,
                        "pos": rec.pos,
                        "ref": rec.ref,
                        "alt": alt,
                        "qual": rec.qual,
                        "filter": flt,
                        "type": variant_type(rec.ref, alt),
                        "genotype": "/".join("." if a is None else str(a) for a in gt) if gt else ".",
                    }
                )
    return rows


def vcf_counts(vcf: str) -> dict:
    rows = vcf_records(vcf)
    passing = [r for r in rows if r["filter"] == "PASS"]
    return {
        "records": len(rows),
        "pass": len(passing),
        "low_qual": len(rows) - len(passing),
        "pass_snps": sum(r["type"] == "snp" for r in passing),
        "pass_indels": sum(r["type"] == "indel" for r in passing),
    }


# Parabricks deepvariant on a 16 GB GPU (T4, V100-16): one inference stream per GPU instead of
# 'auto', which can run out of memory there. (deepvariant has no --low-memory; fq2bam has.)
SMALL_GPU_GB = 16
SMALL_GPU_OPTIONS = "--num-streams-per-gpu 1"


def parabricks_memory_options(placement) -> str:
    """Options for a job placed on a 16 GB GPU or smaller (``placement``: the job's
    :class:`gpubio.gpu.Placement`, from ``SITE.job_placement``), else ""."""
    model = getattr(placement, "model", None)
    return SMALL_GPU_OPTIONS if model is not None and model.vram_gb <= SMALL_GPU_GB else ""
