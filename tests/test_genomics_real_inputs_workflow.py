"""The genomics module through Snakemake on the independent data set (tests/independent/genomics.py):
calls against planted truth for a FASTQ-pair sample and an aligned-BAM sample, and what the
workflow refuses at start-up or fails a job for."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pysam
import pytest

from conftest import REPO, run_snakemake
from independent.genomics import FOREIGN_SAMPLE, N_RUN, make_genomics_set, precision_recall, write_fasta

SHEET_HEADER = "sample\tplatform\tfastq_1\tfastq_2\tbam\n"


def project(root: Path, sheet_rows: str, reference: str) -> Path:
    """A project directory with the genomics module only."""
    shutil.copytree(REPO / "config", root / "config")
    for sheet in ("transcriptomics", "imaging"):
        (root / "config" / f"{sheet}.tsv").write_text("")
    (root / "config" / "genomics.tsv").write_text(SHEET_HEADER + sheet_rows)
    settings = {"genomics": {"reference": reference, "variant_effects": {"enabled": False}}}
    (root / "config" / "independent.yaml").write_text(json.dumps(settings))
    return root


def snakemake(root: Path, *args: str, check: bool = True):
    return run_snakemake(root, "--configfile", "config/config.yaml", "config/independent.yaml", *args, check=check)


@pytest.fixture(scope="module")
def independent_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("genomics-independent")
    data = make_genomics_set(root / "data", seed=7, coverage=30)
    rows = (
        "pairs\tillumina\tdata/pairs_R1.fq.gz\tdata/pairs_R2.fq.gz\t\naligned\tillumina\t\t\tdata/aligned_input.bam\n"
    )
    project(root, rows, "data/genome.fa")
    targets = [f"results/genomics/{s}/{f}" for s in ("pairs", "aligned") for f in ("variants.vcf.gz", "qc.json")]
    snakemake(root, "--cores", "2", *targets)
    return root, data


def test_calls_on_the_independent_set_match_the_planted_truth(independent_run):
    root, data = independent_run
    for sample in ("pairs", "aligned"):
        vcf = root / "results" / "genomics" / sample / "variants.vcf.gz"
        for kind, result in precision_recall(vcf, data["truth"][sample]).items():
            assert result["precision"] >= 0.99 and result["recall"] >= 0.99, (sample, kind, result)
        with pysam.VariantFile(str(vcf)) as fh:
            records = list(fh)
            assert list(fh.header.samples) == [sample]
        # variants in soft-masked sequence are called, with upper-case alleles
        masked = {(v.chrom, v.pos, v.ref, v.alt) for v in data["truth"][sample] if v.soft_masked}
        assert len(masked) >= 15
        assert masked <= {(r.chrom, r.pos, r.ref, a) for r in records for a in r.alts}
        assert all(r.ref.isupper() and all(a.isupper() for a in r.alts) for r in records)
        # nothing called beside the N run
        chrom, start, end = N_RUN
        assert not [r for r in records if r.chrom == chrom and start - 300 <= r.pos <= end + 300]


def test_read_groups_name_the_sheets_sample(independent_run):
    root, _ = independent_run
    for sample in ("pairs", "aligned"):
        with pysam.AlignmentFile(str(root / "results" / "genomics" / sample / "aligned.bam")) as bam:
            groups = bam.header.to_dict()["RG"]
        assert {g["SM"] for g in groups} == {sample}
        qc = json.loads((root / "results" / "genomics" / sample / "qc.json").read_text())
        assert qc["mapped_fraction"] >= 0.97
    assert groups[0]["DS"] == f"original SM: {FOREIGN_SAMPLE}"


def test_paired_records_place_their_bases_on_matching_reference(independent_run):
    """Each mapped mate, clipped or not, matches the reference where it is placed (errors 0.1%,
    variants sparse): a mate whose clips sit on the wrong end would mismatch along its length."""
    root, data = independent_run
    contigs = {name: seq.upper() for name, seq in data["contigs"].items()}
    checked = clipped = 0
    with pysam.AlignmentFile(str(root / "results" / "genomics" / "pairs" / "aligned.bam")) as bam:
        for rec in bam.fetch():
            if rec.is_unmapped or rec.is_supplementary or rec.is_secondary:
                continue
            pairs = [(q, r) for q, r in rec.get_aligned_pairs(matches_only=True)]
            reference = contigs[rec.reference_name]
            mismatches = sum(rec.query_sequence[q] != reference[r] for q, r in pairs if reference[r] != "N")
            assert mismatches <= 6, (rec.query_name, rec.is_read2, rec.cigarstring, mismatches)
            checked += 1
            clipped += rec.is_read2 and "S" in rec.cigarstring
            if checked >= 4000:
                break
    assert checked == 4000 and clipped >= 500


# --------------------------------------------------------------------------- refused at start-up


def test_reference_and_bam_problems_stop_the_run_before_any_job(tmp_path):
    rng_contigs = {"chr2_KI270767v1_alt": "ACGT" * 300, "NC_000913.3": "GATTACA" * 200}
    write_fasta(rng_contigs, tmp_path / "one.fa")
    fasta = tmp_path / "dup.fa"
    one = (tmp_path / "one.fa").read_text()
    fasta.write_text(one + ">NC_000913.3 again\n" + "TTGACC" * 100 + "\n")
    (tmp_path / "reads.bam").write_text("not\ta\tbam\n")
    (tmp_path / "r1.fq").write_text("@a\nACGT\n+\nIIII\n")
    rows = f"fromtext\tillumina\t\t\t{tmp_path / 'reads.bam'}\nok\tillumina\t{tmp_path / 'r1.fq'}\t\t\n"
    root = project(tmp_path / "dup", rows, str(fasta))
    proc = snakemake(root, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in output and "InputFunctionException" not in output
    assert f"genomics.reference '{fasta}' names contig 'NC_000913.3' 2 times" in output
    assert (
        f"config/genomics.tsv row 1 (line 2, sample 'fromtext'): bam '{tmp_path / 'reads.bam'}' is not a BAM file"
        in output
    )
    assert "Traceback" not in output

    packed = tmp_path / "packed.fa.gz"
    with gzip.open(packed, "wt") as fh:
        fh.write(one)
    root = project(tmp_path / "gz", f"ok\tillumina\t{tmp_path / 'r1.fq'}\t\t\n", str(packed))
    proc = snakemake(root, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in output
    assert f"genomics.reference '{packed}' is compressed with plain gzip" in output and "bgzip" in output

    (tmp_path / "empty.fa").write_text("")
    (tmp_path / "reads.fa").write_text("@a\nACGT\n+\nIIII\n")
    for name, problem in (("empty.fa", "is empty"), ("reads.fa", "is not a FASTA file")):
        root = project(tmp_path / f"with-{name}", f"ok\tillumina\t{tmp_path / 'r1.fq'}\t\t\n", str(tmp_path / name))
        proc = snakemake(root, "-n", check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Building DAG" not in output
        assert f"genomics.reference '{tmp_path / name}' {problem}" in output


# --------------------------------------------------------------------------- failed in the job


def test_samples_without_reads_fail_their_jobs_with_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_fasta({"scaffold_12": "ACGTTGCAGG" * 300}, data / "ref genome.fa")
    (data / "no reads.fastq").write_text("")  # a space: paths reach the shell quoted
    for mate in (1, 2):
        with gzip.open(data / f"none_R{mate}.fq.gz", "wt"):
            pass
    with pysam.AlignmentFile(
        str(data / "none.bam"), "wb", header={"HD": {"VN": "1.6"}, "SQ": [{"SN": "scaffold_12", "LN": 3000}]}
    ):
        pass
    rows = (
        "plain\tillumina\tdata/no reads.fastq\t\t\n"
        "packed\tillumina\tdata/none_R1.fq.gz\tdata/none_R2.fq.gz\t\n"
        "nobam\tillumina\t\t\tdata/none.bam\n"
    )
    root = project(tmp_path, rows, "data/ref genome.fa")
    samples = ("plain", "packed", "nobam")
    proc = snakemake(
        root, "--cores", "2", "--keep-going", *[f"results/genomics/{s}/variants.vcf.gz" for s in samples], check=False
    )
    assert proc.returncode != 0
    expected = {
        "plain": ("align_mappy", "align-reads", "data/no reads.fastq"),
        "packed": ("align_mappy", "align-reads", "data/none_R1.fq.gz"),
        "nobam": ("sort_bam", "sort-bam", "data/none.bam"),
    }
    for sample, (rule, command, path) in expected.items():
        log = (root / "logs" / "genomics" / sample / f"{rule}.log").read_text()
        assert "Traceback" not in log
        (line,) = [line for line in log.splitlines() if "holds no reads" in line]
        assert line.startswith(f"gpubio: {command}: {path} holds no reads;"), line
        assert not (root / "results" / "genomics" / sample / "variants.vcf.gz").exists()
