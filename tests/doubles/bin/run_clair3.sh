#!/usr/bin/env python3
"""Test double of Clair3's `run_clair3.sh` (v1.x options); writes <output>/merge_output.vcf.gz."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from doublelib import Parser, call_variants, fail, log_call, require_file  # noqa: E402


def main() -> None:
    log_call("run_clair3.sh")
    p = Parser("run_clair3.sh")
    p.add_argument("--bam_fn", required=True)
    p.add_argument("--ref_fn", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--platform", required=True, choices=["ont", "hifi", "ilmn"])
    p.add_argument("--model_path", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--sample_name", default="SAMPLE")
    p.add_argument("--bed_fn")
    p.add_argument("--vcf_fn")
    p.add_argument("--ctg_name")
    p.add_argument("--qual", type=float)
    p.add_argument("--snp_min_af", type=float)
    p.add_argument("--indel_min_af", type=float)
    p.add_argument("--chunk_size", type=int)
    for flag in ("--include_all_ctgs", "--gvcf", "--enable_phasing", "--longphase_for_phasing",
                 "--use_whatshap_for_final_output_haplotagging", "--remove_intermediate_dir", "--no_phasing_for_fa",
                 "--print_ref_calls", "--haploid_precise", "--haploid_sensitive", "--fast_mode", "--enable_long_indel"):
        p.add_argument(flag, action="store_true")
    a = p.parse_args(sys.argv[1:])
    if not Path(a.model_path).is_dir():
        fail("run_clair3.sh", f"--model_path {a.model_path} is not a directory")
    require_file("run_clair3.sh", a.bam_fn, "--bam_fn")
    require_file("run_clair3.sh", a.ref_fn, "--ref_fn")
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_clair3.log").write_text("double\n")
    call_variants("run_clair3.sh", a.bam_fn, a.ref_fn, str(out / "merge_output.vcf.gz"), a.sample_name)


if __name__ == "__main__":
    main()
