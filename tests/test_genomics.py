"""Genomics units on small hand-made inputs: SAM records from mappy, POD5 shards, basecall BAM
merging and labelling, demux layouts, device options of external tools, variant finishing,
coverage, sheet checks, placement-derived options and the variant-effect models."""

from __future__ import annotations

import array
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from conftest import BIN, REPO
from gpubio.genomics import align, basecall, effects, variants
from gpubio.genomics.alignment_qc import alignment_qc, binned_depth
from gpubio.genomics.sheet import genomics_settings, sequencing_runs, sheet_problems

DOUBLES = REPO / "tests" / "doubles"
sys.path.insert(0, str(DOUBLES))
from doublelib import write_pod5  # noqa: E402

RNG = np.random.default_rng(7)


def random_seq(n: int, rng=RNG) -> str:
    return "".join(rng.choice(list("ACGT"), size=n))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str]:
    seq = random_seq(5000, np.random.default_rng(11))
    path = tmp_path_factory.mktemp("ref") / "ref.fa"
    path.write_text(">ctg\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    pysam.faidx(str(path))
    return path, seq


def write_fastq(path: Path, reads: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"@{name}\n{seq}\n+\n{'I' * len(seq)}\n" for name, seq in reads))
    return path


def records_by_name(bam: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as fh:
        for rec in fh.fetch(until_eof=True):
            out.setdefault(rec.query_name, []).append(rec)
    return out


# --------------------------------------------------------------------------- alignment


def test_mappy_writes_proper_sam_records(reference, tmp_path):
    ref_path, ref = reference
    # clips whose base next to the match differs from the reference, so the clip length is exact
    junk_a = random_seq(29) + next(b for b in "ACGT" if b != ref[999])
    junk_b = ref[1999] + random_seq(19)  # ends up reverse-complemented next to ref[1999]
    single = [
        ("fwd_clipped", junk_a + ref[1000:1300]),
        ("rev_clipped", align.revcomp(ref[2000:2300]) + junk_b),
        ("nowhere", random_seq(300)),
    ]
    bam = tmp_path / "single.bam"
    stats = align.align_reads([str(write_fastq(tmp_path / "s.fq", single))], str(ref_path), "ont", "s1", str(bam))
    assert stats == {"reads": 3, "records": 3, "mapped": 2}
    recs = {k: v[0] for k, v in records_by_name(bam).items()}
    fwd, rev, none = recs["fwd_clipped"], recs["rev_clipped"], recs["nowhere"]
    assert (fwd.is_reverse, fwd.reference_start, fwd.cigartuples[0]) == (False, 1000, (4, 30))  # 30S first
    assert fwd.query_sequence == single[0][1]
    # reverse strand: SEQ is the reverse complement, the read's trailing junk is now a leading clip
    assert (rev.is_reverse, rev.reference_start, rev.cigartuples[0]) == (True, 2000, (4, 20))
    assert rev.query_sequence == align.revcomp(single[1][1])
    assert rev.query_qualities is not None and len(rev.query_qualities) == 320
    assert fwd.mapping_quality == 60 and fwd.get_tag("NM") == 0 and fwd.get_tag("RG") == "s1"
    assert none.is_unmapped and none.query_sequence == single[2][1]
    with pysam.AlignmentFile(str(bam), "rb") as fh:
        header = fh.header.to_dict()
    assert header["RG"] == [{"ID": "s1", "SM": "s1", "LB": "s1", "PL": "ONT"}]
    assert header["SQ"] == [{"SN": "ctg", "LN": 5000}]


def test_mappy_pairs_get_mate_fields(reference, tmp_path):
    ref_path, ref = reference
    fragment = ref[3000:3400]
    r1 = write_fastq(tmp_path / "r1.fq", [("p/1", fragment[:150])])
    r2 = write_fastq(tmp_path / "r2.fq", [("p/2", align.revcomp(fragment)[:150])])
    bam = tmp_path / "pair.bam"
    align.align_reads([str(r1), str(r2)], str(ref_path), "illumina", "ill", str(bam))
    first, second = sorted(records_by_name(bam)["p"], key=lambda r: r.is_read2)
    assert first.flag == 99 and second.flag == 147  # paired, proper, mate reverse / reverse, first / second
    assert (first.reference_start, second.reference_start) == (3000, 3250)
    assert first.next_reference_start == 3250 and second.next_reference_start == 3000
    assert (first.template_length, second.template_length) == (400, -400)


def test_unaligned_bam_keeps_read_groups_and_tags(reference, tmp_path):
    ref_path, ref = reference
    ubam = tmp_path / "reads.bam"
    header = {"HD": {"VN": "1.6", "SO": "unknown"}, "RG": [{"ID": "run1_hac", "PL": "ONT", "SM": "lib"}]}
    seq = align.revcomp(ref[500:900])  # maps to the reverse strand
    with pysam.AlignmentFile(str(ubam), "wb", header=header) as out:
        rec = pysam.AlignedSegment(out.header)
        rec.query_name, rec.flag, rec.query_sequence = "r1", 4, seq
        rec.query_qualities = pysam.qualitystring_to_array("5" * len(seq))
        rec.set_tags(
            [
                ("qs", 20.0, "f"),
                ("ch", 7, "i"),
                ("RG", "run1_hac", "Z"),
                ("MM", "C+m?,0;", "Z"),
                ("ML", array.array("B", [200])),
            ]
        )
        out.write(rec)
    bam = tmp_path / "aligned.bam"
    align.align_reads([str(ubam)], str(ref_path), "ont", "sampleX", str(bam))
    rec = records_by_name(bam)["r1"][0]
    assert rec.is_reverse and rec.get_tag("RG") == "run1_hac" and rec.get_tag("ch") == 7
    assert rec.get_tag("qs") == pytest.approx(20.0)
    assert rec.get_tag("MM") == "C+m?,0;" and list(rec.get_tag("ML")) == [200]
    assert rec.modified_bases  # MM/ML stay interpretable on the reverse strand
    with pysam.AlignmentFile(str(bam), "rb") as fh:
        assert fh.header.to_dict()["RG"] == [{"ID": "run1_hac", "PL": "ONT", "SM": "sampleX", "DS": "original SM: lib"}]


def test_sort_and_index_adds_a_read_group_when_missing(reference, tmp_path):
    ref_path, ref = reference
    unsorted = tmp_path / "u.bam"
    header = {"HD": {"VN": "1.6"}, "SQ": [{"SN": "ctg", "LN": 5000}]}
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for start in (4000, 100, 2000):
            rec = pysam.AlignedSegment(out.header)
            rec.query_name, rec.reference_id, rec.reference_start = f"r{start}", 0, start
            rec.query_sequence, rec.cigarstring, rec.mapping_quality = ref[start : start + 50], "50M", 60
            out.write(rec)
    out_bam = tmp_path / "sorted.bam"
    align.sort_and_index(str(unsorted), str(out_bam), "smp", "ont", threads=1)
    with pysam.AlignmentFile(str(out_bam), "rb") as fh:
        starts = [r.reference_start for r in fh.fetch()]
        assert starts == [100, 2000, 4000]
        assert {r.get_tag("RG") for r in fh.fetch()} == {"smp"}
        assert fh.header.to_dict()["RG"][0]["SM"] == "smp"
    assert Path(f"{out_bam}.bai").stat().st_mtime >= out_bam.stat().st_mtime
    assert align.is_aligned_bam(str(out_bam))


# --------------------------------------------------------------------------- POD5 shards


def test_pod5_shards_cover_every_read_exactly_once(tmp_path):
    import pod5

    rng = np.random.default_rng(3)
    reads = [(random_seq(int(rng.integers(200, 4000)), rng), 0) for _ in range(40)]
    pod5_file = tmp_path / "run.pod5"
    ids = write_pod5(pod5_file, reads)
    shard_size_mb = pod5_file.stat().st_size / 1e6 / 3.5
    count = basecall.shard_count(pod5_file, shard_size_mb)
    assert count == 4
    table, plan, shards = tmp_path / "reads.tsv", tmp_path / "plan.tsv", tmp_path / "shards"
    pod5_cli = str(BIN / "pod5")
    subprocess.run(
        [pod5_cli, "view", str(pod5_file), "--include", "read_id,num_samples", "--output", str(table)],
        check=True,
        capture_output=True,
    )
    per_shard = basecall.plan_shards(str(table), count, str(plan))
    subprocess.run(
        [
            pod5_cli,
            "subset",
            str(pod5_file),
            "--table",
            str(plan),
            "--columns",
            "shard",
            "--template",
            "{shard}.pod5",
            "--output",
            str(shards),
        ],
        check=True,
        capture_output=True,
    )
    seen, signal = [], {}
    for shard in sorted(shards.glob("*.pod5")):
        with pod5.Reader(shard) as reader:
            shard_ids = [str(r.read_id) for r in reader.reads()]
            signal[shard.stem] = sum(r.num_samples for r in reader.reads())
        assert len(shard_ids) == per_shard[shard.stem]
        seen += shard_ids
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))  # every read once
    assert sorted(signal) == basecall.shard_names(4)
    assert max(signal.values()) / min(signal.values()) < 1.3  # balanced by signal length
    with pytest.raises(ValueError, match="raise genomics.basecall.shard_size_mb"):
        basecall.plan_shards(str(table), 41, str(tmp_path / "too_many.tsv"))


# --------------------------------------------------------------------------- basecalled BAMs


def write_ubam(path: Path, groups: list[str], reads: list[tuple[str, str]]) -> None:
    header = {"HD": {"VN": "1.6", "SO": "unknown"}, "RG": [{"ID": g, "PL": "ONT", "SM": "lib1"} for g in groups]}
    with pysam.AlignmentFile(str(path), "wb", header=header) as out:
        for name, rg in reads:
            rec = pysam.AlignedSegment(out.header)
            rec.query_name, rec.flag, rec.query_sequence = name, 4, "ACGTACGT"
            rec.set_tags([("RG", rg, "Z"), ("qs", 15.5, "f"), ("ch", 3, "i")])
            out.write(rec)


def test_merge_and_label_keep_read_groups_and_tags(tmp_path):
    base = "run1_dna_r10.4.1_e8.2_400bps_hac@v5.0.0"
    bc1, bc2 = f"{base}_SQK-NBD114-24_barcode01", f"{base}_SQK-NBD114-24_barcode02"
    write_ubam(tmp_path / "s0.bam", [base, bc1, bc2], [("a", bc1), ("b", bc2)])
    write_ubam(tmp_path / "s1.bam", [base, bc1, bc2], [("c", bc1), ("d", base)])
    merged = tmp_path / "merged.bam"
    assert basecall.merge_unaligned_bams([str(tmp_path / "s0.bam"), str(tmp_path / "s1.bam")], str(merged)) == 4
    with pysam.AlignmentFile(str(merged), "rb", check_sq=False) as fh:
        assert [rg["ID"] for rg in fh.header.to_dict()["RG"]] == [base, bc1, bc2]
        recs = {r.query_name: r for r in fh.fetch(until_eof=True)}
    assert recs["c"].get_tag("RG") == bc1 and recs["c"].get_tag("qs") == pytest.approx(15.5)
    out = tmp_path / "reads.bam"
    basecall.label_reads([str(merged)], "patientA", str(out), barcode="barcode01")
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as fh:
        groups = fh.header.to_dict()["RG"]
        assert [(g["ID"], g["SM"]) for g in groups] == [(base, "patientA"), (bc1, "patientA")]
    write_ubam(tmp_path / "other.bam", [base], [("x", base)])
    bad = {"HD": {"VN": "1.6"}, "RG": [{"ID": base, "PL": "PACBIO"}]}
    with pysam.AlignmentFile(str(tmp_path / "clash.bam"), "wb", header=bad):
        pass
    with pytest.raises(ValueError, match="differs between inputs"):
        basecall.merge_unaligned_bams(
            [str(tmp_path / "other.bam"), str(tmp_path / "clash.bam")], str(tmp_path / "m2.bam")
        )


def test_demux_bams_reads_nested_and_flat_layouts(tmp_path):
    nested = tmp_path / "nested" / "exp" / "lib" / "20240501_1200_1A_PAW1_abc"
    for folder in ("bam_pass/barcode01", "bam_pass/barcode02", "bam_fail/barcode01", "bam_pass/unclassified"):
        (nested / folder).mkdir(parents=True)
        (nested / folder / "PAW1_x_0.bam").write_bytes(b"")
    found = basecall.demux_bams(tmp_path / "nested", "barcode01")
    assert [p.relative_to(nested).parts[:2] for p in found] == [("bam_pass", "barcode01")]
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("SQK-NBD114-24_barcode01.bam", "SQK-NBD114-24_barcode10.bam", "unclassified.bam"):
        (flat / name).write_bytes(b"")
    assert [p.name for p in basecall.demux_bams(flat, "barcode01")] == ["SQK-NBD114-24_barcode01.bam"]
    with pytest.raises(FileNotFoundError, match="no reads for barcode03"):
        basecall.sample_reads(str(flat), "s", str(tmp_path / "o.bam"), barcode="barcode03")


# --------------------------------------------------------------------------- external tools on GPU / CPU


def tool_env(tmp_path: Path, gpus: int) -> dict:
    """Test doubles on PATH (the nvidia-smi double lists the `gpus` fake devices)."""
    env = dict(os.environ, GPUBIO_NUM_GPUS=str(gpus), GPUBIO_GPU_LOCK_DIR=str(tmp_path / "locks"))
    env["PATH"] = os.pathsep.join([str(DOUBLES / "bin"), env["PATH"]])
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_basecall_on_a_gpu_the_driver_does_not_list_runs_on_the_cpu_or_fails_when_required(tmp_path):
    """SLURM (here: the pinning) gave the job a device, but the node's driver lists none:
    dorado gets its CPU options and the log says why; with --require-gpu the job fails."""
    pod5_file = tmp_path / "r.pod5"
    write_pod5(pod5_file, [("ACGTACGTAC" * 20, 0)])
    env = tool_env(tmp_path, 2)
    broken = tmp_path / "broken-driver"
    broken.mkdir()
    (broken / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (broken / "nvidia-smi").chmod(0o755)
    env["PATH"] = os.pathsep.join([str(broken), env["PATH"]])
    base = [sys.executable, "-m", "gpubio", "--gpus", "1"]
    tool = [
        "tool-on-device",
        "--gpu-args=--device cuda:all",
        "--cpu-args=-x cpu",
        "--stdout",
        str(tmp_path / "calls.bam"),
        "--",
        "dorado",
        "basecaller",
        "hac",
        str(pod5_file),
    ]
    proc = subprocess.run(base + tool, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dorado on the CPU: nvidia-smi -L lists 0 device(s) (exit 9), 1 assigned" in proc.stderr
    assert f"dorado basecaller hac {pod5_file} -x cpu" in proc.stderr
    strict = subprocess.run(base + ["--require-gpu"] + tool, env=env, capture_output=True, text=True)
    assert strict.returncode != 0 and "Traceback" not in strict.stderr
    assert strict.stderr.strip().splitlines()[-1].startswith("gpubio: tool-on-device: dorado: nvidia-smi -L lists 0")


@pytest.mark.parametrize("gpus", [0, 2])
def test_basecall_device_follows_the_pinned_gpus(tmp_path, gpus):
    pod5_file = tmp_path / "r.pod5"
    write_pod5(pod5_file, [("ACGTACGTAC" * 20, 0), ("TTGCA" * 30, 0)])
    out = tmp_path / "calls.bam"
    cmd = [
        sys.executable,
        "-m",
        "gpubio",
        "--gpus",
        "1",
        "tool-on-device",
        "--gpu-args=--device cuda:all",
        "--cpu-args=-x cpu",
        "--stdout",
        str(out),
        "--",
        "dorado",
        "basecaller",
        "hac",
        str(pod5_file),
    ]
    proc = subprocess.run(cmd, env=tool_env(tmp_path, gpus), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected_args = "--device cuda:all" if gpus else "-x cpu"
    assert f"dorado basecaller hac {pod5_file} {expected_args}" in proc.stderr
    assert ("on GPU(s) [0]" if gpus else "on the CPU") in proc.stderr
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as fh:
        pg = fh.header.to_dict()["PG"][0]
        assert (
            expected_args in pg["CL"] and [r.query_sequence for r in fh.fetch(until_eof=True)][0] == "ACGTACGTAC" * 20
        )


def test_gpu_required_but_missing_fails_before_the_tool_runs(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "gpubio",
        "--gpus",
        "1",
        "--require-gpu",
        "tool-on-device",
        "--gpu-args=--device cuda:all",
        "--cpu-args=-x cpu",
        "--",
        "dorado",
        "basecaller",
        "hac",
        "missing.pod5",
    ]
    proc = subprocess.run(cmd, env=tool_env(tmp_path, 0), capture_output=True, text=True)
    assert proc.returncode != 0 and "requires a GPU" in proc.stderr and "dorado basecaller" not in proc.stderr


def test_dorado_double_rejects_what_dorado_rejects(tmp_path):
    env = tool_env(tmp_path, 0)
    dorado = str(DOUBLES / "bin" / "dorado")
    pod5_file = tmp_path / "r.pod5"
    write_pod5(pod5_file, [("ACGT" * 10, 0)])
    runs = {
        "cuda without GPU": [dorado, "basecaller", "hac", str(pod5_file), "--device", "cuda:all"],
        "unknown option": [dorado, "basecaller", "hac", str(pod5_file), "--no-such-option"],
        "bad model": [dorado, "basecaller", "turbo", str(pod5_file), "-x", "cpu"],
        "demux without mode": [dorado, "demux", "--output-dir", str(tmp_path / "d"), str(tmp_path / "x.bam")],
    }
    for what, cmd in runs.items():
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode != 0 and "double] error" in proc.stderr, what


# --------------------------------------------------------------------------- variants


def test_finish_calls_normalises_filters_and_indexes(tmp_path):
    seq = "ACGTTGCA" + "CACACACACA" + "TTGACCGTAGGCTAGCTAGGATCCGATTACA" * 3
    ref = tmp_path / "ref.fa"
    ref.write_text(f">c\n{seq}\n")
    pysam.faidx(str(ref))
    # a CA deletion written at the right end of the repeat, a multi-allelic SNP, a low-quality SNP
    raw = tmp_path / "raw.vcf"
    lines = [
        "##fileformat=VCFv4.2",
        f"##contig=<ID=c,length={len(seq)}>",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", "caller_sample"]),
        f"c\t16\t.\t{seq[15:18]}\t{seq[15]}\t60\t.\t.\tGT\t0/1",
        f"c\t25\t.\t{seq[24]}\tA,C\t80\t.\t.\tGT\t1/2",
        f"c\t40\t.\t{seq[39]}\t{'T' if seq[39] != 'T' else 'G'}\t3\t.\t.\tGT\t0/1",
    ]
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path / "variants.vcf.gz"
    counts = variants.finish_calls(str(raw), str(ref), "patient1", 10, str(out))
    assert counts == {"records": 4, "pass": 3, "low_qual": 1, "pass_snps": 2, "pass_indels": 1}
    assert Path(f"{out}.tbi").exists() and not list(tmp_path.glob(".variants*"))
    with pysam.VariantFile(str(out)) as fh:
        assert list(fh.header.samples) == ["patient1"]
        recs = [(r.pos, r.ref, r.alts[0], list(r.filter)) for r in fh]
    assert recs[0] == (6, seq[5:8], seq[5], ["PASS"])  # left-aligned: the anchor G before the CA repeat
    assert [r[2] for r in recs if r[0] == 25] == ["A", "C"]  # split
    assert recs[-1][3] == ["LowQual"]


# --------------------------------------------------------------------------- coverage and QC


def test_binned_depth_matches_per_base_counting():
    rng = np.random.default_rng(5)
    starts = rng.integers(0, 9000, size=300)
    ends = starts + rng.integers(50, 1500, size=300)
    ends = np.minimum(ends, 10_000)
    per_base = np.zeros(10_000)
    for s, e in zip(starts, ends):
        per_base[s:e] += 1
    depth = binned_depth(starts, ends, 10_000, 700)
    expected = [per_base[i : i + 700].mean() for i in range(0, 10_000, 700)]
    assert np.allclose(depth, expected)


def test_alignment_qc_counts_mapped_reads_and_depth(reference, tmp_path):
    ref_path, ref = reference
    reads = [(f"r{i}", ref[i * 40 : i * 40 + 400]) for i in range(100)] + [("junk", random_seq(400))]
    bam = tmp_path / "a.bam"
    align.align_reads([str(write_fastq(tmp_path / "q.fq", reads))], str(ref_path), "ont", "q", str(bam))
    align.sort_and_index(str(bam), str(tmp_path / "s.bam"), "q", "ont")
    qc, profile = alignment_qc(str(tmp_path / "s.bam"), {"reads": 101})
    assert qc["mapped_reads"] == 100 and qc["mapped_fraction"] == pytest.approx(100 / 101)
    assert qc["mean_depth"] == pytest.approx(100 * 400 / 5000, rel=0.02)
    assert qc["reads"] == 101 and qc["read_groups"] == ["q"]
    assert sum(r["depth"] * (r["end"] - r["start"]) for r in profile) == pytest.approx(100 * 400, rel=0.02)


# --------------------------------------------------------------------------- sheet and settings


def sheet(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows).fillna("")
    return table.set_index("sample", drop=False)


def test_sheet_problems_name_row_and_fix(tmp_path):
    settings = genomics_settings({"genomics": {"samples": "g.tsv", "variant_effects": {"enabled": False}}})
    table = sheet(
        [
            {"sample": "a", "platform": "ont", "pod5": "run.pod5", "barcode": "barcode01"},
            {"sample": "b", "platform": "ont", "pod5": "run.pod5", "barcode": "barcode01"},
            {"sample": "c", "platform": "illumina", "pod5": "other.pod5", "barcode": ""},
            {"sample": "d", "platform": "ont", "fastq_1": "x.fq", "barcode": "barcode02"},
        ]
    )
    problems = sheet_problems(table, "g.tsv", settings, "config.yaml")
    text = "\n".join(problems)
    assert "g.tsv row 1 (line 2, sample 'a'): barcode 'barcode01' given but genomics.basecall.kit_name is empty" in text
    assert "run 'run' uses a barcode twice" in text
    assert "row 3 (line 4, sample 'c'): POD5 is Oxford Nanopore signal, but platform is 'illumina'" in text
    assert "row 4 (line 5, sample 'd'): barcode/run only apply to POD5 input" in text
    settings["basecall"]["kit_name"] = "SQK-NBD114-24"
    runs = sequencing_runs(table)
    assert runs["run"].barcodes == {"a": "barcode01", "b": "barcode01"} and runs["c"].pod5 == "other.pod5"
    clair = genomics_settings(
        {
            "genomics": {
                "variants": {"caller": {"ont": "clair3"}},
                "variant_effects": {"weights": str(tmp_path / "none")},
            }
        }
    )
    problems = sheet_problems(sheet([{"sample": "e", "platform": "ont", "fastq_1": "e.fq"}]), "g.tsv", clair, "c.yaml")
    assert any("caller.ont is clair3 but genomics.variants.clair3.model is empty" in p for p in problems)
    assert any("variant_effects.weights" in p and "is not a directory" in p for p in problems)


def test_parabricks_gets_one_stream_per_gpu_on_16_gb_cards():
    from gpubio.gpu import GpuNeed, build_site, gpu_resources

    site = build_site(REPO / "profiles" / "slurm-gpu" / "partitions.yaml")
    res = gpu_resources(site, "call_parabricks", vram_gb=16)
    wildcards = {"sample": "s1"}
    assert site.job_placement("call_parabricks", wildcards) is None  # not placed yet
    assert variants.parabricks_memory_options(None) == ""
    # the job's resources place it once; its params read that placement back
    assert res["slurm_partition"](wildcards, attempt=1, rulename="call_parabricks") == "gpu-t4"
    placed = site.job_placement("call_parabricks", wildcards)
    assert placed.partition == "gpu-t4" and placed.model.vram_gb == 16
    assert variants.parabricks_memory_options(placed) == "--num-streams-per-gpu 1"
    assert variants.parabricks_memory_options(site.place(GpuNeed(vram_gb=20))) == ""  # an A100-40


# --------------------------------------------------------------------------- variant effects


@pytest.fixture(scope="module")
def tiny_enformer(tmp_path_factory) -> Path:
    from gpubio.demo.genomics import write_tiny_enformer

    return write_tiny_enformer(tmp_path_factory.mktemp("weights") / "enformer", seed=3)


def test_windows_keep_length_and_centre_the_variant(reference):
    ref_path, ref = reference
    with pysam.FastaFile(str(ref_path)) as fasta:
        snp = effects.Variant("ctg", 2001, ref[2000], "A" if ref[2000] != "A" else "C")
        r, a = effects.windows(fasta, snp, 64)
        assert len(r) == len(a) == 64 and r == ref[1968:2032] and a[32] == snp.alt and a[:32] == r[:32]
        deletion = effects.Variant("ctg", 3001, ref[3000:3004], ref[3000])
        r, a = effects.windows(fasta, deletion, 64)
        assert len(a) == 64 and a == (ref[2968:3001] + ref[3004:3035])
        edge = effects.Variant("ctg", 5, ref[4], "A" if ref[4] != "A" else "G")
        r, _ = effects.windows(fasta, edge, 64)
        assert r.startswith("N" * 28) and r[28:] == ref[:36]
        with pytest.raises(ValueError, match="REF does not match"):
            effects.windows(fasta, effects.Variant("ctg", 10, "NN", "A"), 64)


def test_enformer_scores_are_finite_batched_and_reproducible(reference, tiny_enformer):
    import torch

    torch.set_num_threads(1)
    ref_path, ref = reference
    found = [effects.Variant("ctg", p + 1, ref[p], "T" if ref[p] != "T" else "G") for p in range(300, 4700, 400)]
    found.append(effects.Variant("ctg", 2501, ref[2500], ref[2500] + "GATTACA"))
    model = effects.load_effect_model("enformer", tiny_enformer, 512, "cpu")
    assert model.track_names == [f"track_{i}" for i in range(8)]
    by_batch = {b: effects.score_variants(model, str(ref_path), found, b) for b in (1, 5)}
    again = effects.score_variants(
        effects.load_effect_model("enformer", tiny_enformer, 512, "cpu"), str(ref_path), found, 5
    )
    scores = {b: np.array([r["score"] for r in rows]) for b, rows in by_batch.items()}
    assert len(scores[1]) == len(found) and np.isfinite(scores[1]).all() and (scores[1] > 0).all()
    assert np.allclose(scores[1], scores[5], rtol=0, atol=1e-6)  # batch size does not change a score
    assert [r["score"] for r in again] == [r["score"] for r in by_batch[5]]  # same weights, same numbers
    assert [r["variant"] for r in by_batch[1]][-1] == f"ctg:2501:{ref[2500]}>{ref[2500]}GATTACA"
    out = Path(tiny_enformer).parent / "effects.tsv"
    effects.write_effects(by_batch[5], str(out))
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == effects.EFFECT_COLUMNS and len(table) == len(found)
    with pytest.raises(ValueError, match="multiple of 16"):
        effects.load_effect_model("enformer", tiny_enformer, 500, "cpu")


def test_a_second_model_family_plugs_in_behind_the_same_interface(reference, tmp_path):
    import itertools

    from transformers import BertConfig, BertModel, BertTokenizer

    ref_path, ref = reference
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ["".join(k) for k in itertools.product("ACGT", repeat=3)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    weights = tmp_path / "dnabert"
    BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False).save_pretrained(weights)
    import torch

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(weights, safe_serialization=False)
    assert set(effects.MODEL_FAMILIES) >= {"enformer", "dnabert"}
    model = effects.load_effect_model("dnabert", weights, 64, "cpu")
    assert model.kmer == 3 and model.track_names == ["embedding_cosine_distance"]
    found = [effects.Variant("ctg", p + 1, ref[p], "C" if ref[p] != "C" else "A") for p in (1000, 2000, 3000)]
    rows = effects.score_variants(model, str(ref_path), found, batch_size=2)
    assert all(np.isfinite(r["score"]) and r["score"] > 0 for r in rows)
    with pytest.raises(ValueError, match="unknown model family 'hyena'"):
        effects.load_effect_model("hyena", weights, 64, "cpu")
    with pytest.raises(FileNotFoundError, match="stage the enformer weights"):
        effects.load_effect_model("enformer", tmp_path / "absent", 64, "cpu")
