"""Sheet paths and config values reach the rules' shell commands as data, never as commands.

File names carry a space, quotes, `$(...)`, backticks, `;` and `#`; each would run `touch
<marker>` if it reached a shell unquoted. The workflow must read those files (the planted
variants are called, the image is registered) and no marker may appear anywhere.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, REPO, run_snakemake

MARKERS = ("pwned_dollar", "pwned_backtick", "pwned_semicolon", "pwned_config")
# one folder and file names that each try a different way out of a shell word
HOSTILE_DIR = "my data (it's $(touch pwned_dollar))"
HOSTILE_R1 = "reads `touch pwned_backtick` #1_R1.fq"
HOSTILE_R2 = 'mate; touch pwned_semicolon; "2"_R2.fq'
HOSTILE_REFERENCE = "ref $(touch pwned_config).fa"


def markers_left(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.name in MARKERS)


def write_config(root: Path, settings: dict) -> None:
    """The repository's config plus `settings` (JSON is YAML); modules left out are off."""
    (root / "config").mkdir()
    (root / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    off = {"samples": "config/none.tsv"}
    settings = {"genomics": off, "transcriptomics": off, "imaging": off} | settings
    (root / "config" / "test.yaml").write_text(json.dumps(settings))


# --------------------------------------------------------------------------- genomics data


def revcomp(seq: str) -> str:
    return seq[::-1].translate(str.maketrans("ACGT", "TGCA"))


def write_genomics(
    root: Path,
    rng: np.random.Generator,
    reference_name: str = HOSTILE_REFERENCE,
    folder: str = HOSTILE_DIR,
    mates: tuple[str, str] = (HOSTILE_R1, HOSTILE_R2),
) -> set[tuple]:
    """A 4 kb contig, two homozygous SNPs, 400 read pairs of 100 bp (20x); returns the SNPs."""
    reference = "".join(rng.choice(list("ACGT"), 4000))
    snps = {1500: None, 2600: None}
    sample = list(reference)
    for pos in snps:  # 1-based
        snps[pos] = next(b for b in "ACGT" if b != reference[pos - 1])
        sample[pos - 1] = snps[pos]
    sample = "".join(sample)
    (root / reference_name).write_text(">chrT\n" + "\n".join(reference[i : i + 60] for i in range(0, 4000, 60)) + "\n")
    (root / folder).mkdir()
    with open(root / folder / mates[0], "w") as r1, open(root / folder / mates[1], "w") as r2:
        for i, start in enumerate(rng.integers(0, len(sample) - 250, 400)):
            fragment = sample[start : start + 250]
            for fh, seq in ((r1, fragment[:100]), (r2, revcomp(fragment[-100:]))):
                fh.write(f"@pair{i}\n{seq}\n+\n{'I' * 100}\n")
    return {("chrT", pos, reference[pos - 1], alt) for pos, alt in snps.items()}


def test_hostile_fastq_and_reference_paths_run_end_to_end_and_run_nothing(tmp_path):
    import pysam

    truth = write_genomics(tmp_path, np.random.default_rng(7))
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "genomics.tsv").write_text(
        "sample\tplatform\tfastq_1\tfastq_2\n"
        "# a comment line; the '#' inside the path below is part of the name\n"
        f"s1\tillumina\t{HOSTILE_DIR}/{HOSTILE_R1}\t{HOSTILE_DIR}/{HOSTILE_R2}\n"
    )
    write_config(
        tmp_path,
        {
            "genomics": {
                "samples": "sheets/genomics.tsv",
                "reference": HOSTILE_REFERENCE,
                "variants": {"caller": {"illumina": "bcftools"}, "bcftools_options": "--min-BQ 0"},
                "variant_effects": {"enabled": False},
            }
        },
    )
    run_snakemake(
        tmp_path,
        "--configfile",
        "config/config.yaml",
        "config/test.yaml",
        "--cores",
        "2",
        "results/genomics/s1/variants.vcf.gz",
        "results/genomics/s1/qc.json",
    )

    assert markers_left(tmp_path) == []
    out = tmp_path / "results" / "genomics" / "s1"
    with pysam.VariantFile(str(out / "variants.vcf.gz")) as fh:
        calls = {(v.chrom, v.pos, v.ref, v.alts[0]): v.samples[0]["GT"] for v in fh if list(v.filter) == ["PASS"]}
    assert set(calls) == truth and set(calls.values()) == {(1, 1)}
    qc = json.loads((out / "qc.json").read_text())
    assert qc["mapped_fraction"] == 1.0 and qc["reads"] == 800
    assert (tmp_path / f"{HOSTILE_REFERENCE}.fai").read_text().split("\t")[:2] == ["chrT", "4000"]


# --------------------------------------------------------------------------- imaging data


def write_imaging(root: Path, rng: np.random.Generator, shift: tuple[int, int]) -> tuple[Path, Path]:
    """A 96 x 96 uint16 field of 12 blobs and the same field shifted by `shift` (the reference)."""
    import tifffile

    yy, xx = np.mgrid[:96, :96]
    field = np.zeros((96, 96))
    for y, x in rng.uniform(20, 76, size=(12, 2)):
        field += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2))
    image = (field / field.max() * 3000 + 100).astype(np.uint16)
    folder = root / HOSTILE_DIR
    folder.mkdir()
    moving, fixed = folder / "cells `touch pwned_backtick`.tif", folder / "ref; touch pwned_semicolon #2.tif"
    tifffile.imwrite(moving, image)
    tifffile.imwrite(fixed, np.roll(image, shift, axis=(0, 1)))
    return moving, fixed


def test_hostile_image_paths_run_end_to_end_and_run_nothing(tmp_path):
    moving, fixed = write_imaging(tmp_path, np.random.default_rng(3), shift=(4, -3))
    (tmp_path / "sheets").mkdir()
    image, reference = (str(p.relative_to(tmp_path)) for p in (moving, fixed))
    (tmp_path / "sheets" / "imaging.tsv").write_text(f"sample\timage\treference_image\ncells\t{image}\t{reference}\n")
    write_config(
        tmp_path,
        {
            "imaging": {
                "samples": "sheets/imaging.tsv",
                "registration": {"elastix": {"transforms": ["translation"]}},
                "segmentation": {"model": "cyto3"},
            }
        },
    )
    run_snakemake(
        tmp_path,
        "--configfile",
        "config/config.yaml",
        "config/test.yaml",
        "--cores",
        "2",
        "results/imaging/cells/qc.json",
        "results/imaging/cells/transform.json",
    )

    assert markers_left(tmp_path) == []
    out = tmp_path / "results" / "imaging" / "cells"
    qc = json.loads((out / "qc.json").read_text())
    import tifffile

    assert qc["shape"] == [96, 96] and qc["max"] == [int(tifffile.imread(moving).max())]
    transform = json.loads((out / "transform.json").read_text())
    # each path arrived as one argument, exactly as written in the sheet
    assert (transform["image"], transform["reference"]) == (image, reference)
    assert sorted(np.abs(transform["rigid"]["translation_rc"])) == pytest.approx([3, 4], abs=0.2)
    assert transform["ncc_after"] > 0.99 > transform["ncc_before"]


# --------------------------------------------------------------------------- config values


def startup_error(tmp_path: Path, genomics: dict) -> str:
    """Run (not dry-run) the workflow with `genomics` settings; return what it said on failing."""
    (tmp_path / "reads.fq").write_text("@r\nACGT\n+\nIIII\n")
    (tmp_path / "ref.fa").write_text(">c\nACGTACGT\n")
    (tmp_path / "weights").mkdir()
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "genomics.tsv").write_text("sample\tplatform\tfastq_1\ns1\tont\treads.fq\n")
    write_config(
        tmp_path,
        {
            "genomics": {
                "samples": "sheets/genomics.tsv",
                "reference": "ref.fa",
                "variant_effects": {"weights": "weights"},
            }
            | genomics
        },
    )
    proc = run_snakemake(
        tmp_path, "--configfile", "config/config.yaml", "config/test.yaml", "--cores", "1", check=False
    )
    assert proc.returncode != 0
    assert markers_left(tmp_path) == [] and not (tmp_path / "results").exists()
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.mark.parametrize(
    "key, settings",
    [
        ("variant_effects.head", {"variant_effects": {"weights": "weights", "head": "human; touch pwned_config"}}),
        # Snakemake pastes environment module names into `module load` as they are
        ("modules.dorado", {"modules": {"dorado": "dorado; touch pwned_config"}}),
    ],
)
def test_command_in_a_name_setting_is_refused_at_startup_in_one_line(tmp_path, key, settings):
    stderr = startup_error(tmp_path, settings)
    lines = [line for line in stderr.splitlines() if f"genomics.{key}" in line]
    assert len(lines) == 1 and "1 problem(s)" in stderr
    assert "; touch pwned_config'" in lines[0] and "fix the value" in lines[0]


def test_unbalanced_quote_in_extra_options_is_refused_at_startup_in_one_line(tmp_path):
    stderr = startup_error(tmp_path, {"basecall": {"options": "--min-qscore '9"}})
    lines = [line for line in stderr.splitlines() if "genomics.basecall.options" in line]
    assert len(lines) == 1 and "No closing quotation" in lines[0] and "1 problem(s)" in stderr


def shell_commands(dry_run_output: str) -> dict[str, list[list[str]]]:
    """rule -> the argument vectors of its jobs' shell commands, as the shell will split them."""
    commands: dict[str, list[list[str]]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        line = line.strip()  # the jobs of a group are printed indented
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.startswith("Shell command: "):
            commands.setdefault(rule, []).append(shlex.split(line[len("Shell command: ") :]))
    return commands


def contains(argv: list[str], words: list[str]) -> bool:
    return any(argv[i : i + len(words)] == words for i in range(len(argv)))


def test_dry_run_shows_every_tool_option_as_the_words_the_user_meant(tmp_path):
    """Extra options with quotes, `;` and `$(...)`, model and directory names with spaces: the
    printed command splits into exactly the intended words, in every external tool's rule."""
    (tmp_path / "run 1.pod5").write_bytes(b"placeholder")
    (tmp_path / "ont reads.fq").write_text("@r1\nACGTACGT\n+\nIIIIIIII\n")  # start-up reads its first record
    (tmp_path / "ref $(x).fa").write_text(">chrT\nACGTACGTAC\n")  # the reference is checked at start-up
    for folder in ("dorado models", "clair3 model; x"):
        (tmp_path / folder).mkdir()
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "genomics.tsv").write_text(
        "sample\tplatform\tpod5\tfastq_1\tfastq_2\n"
        "p1\tont\trun 1.pod5\t\t\n"
        "o1\tont\t\tont reads.fq\t\n"
        "i1\tillumina\t\tont reads.fq\tont reads.fq\n"
    )
    tricky = "--tag 'a b; $(touch pwned_config)' --flag=`id`"
    words = ["--tag", "a b; $(touch pwned_config)", "--flag=`id`"]
    write_config(
        tmp_path,
        {
            "genomics": {
                "samples": "sheets/genomics.tsv",
                "reference": "ref $(x).fa",
                "basecall": {"model": "sup@v5.2.0", "models_directory": "dorado models", "options": tricky},
                "align": {"ont": "dorado", "dorado_options": "--mm2-opts '-k 15'"},
                "variants": {
                    "caller": {"illumina": "deepvariant_gpu", "ont": "clair3"},
                    "bcftools_options": tricky,
                    "parabricks": {"options": tricky},
                    "clair3": {"model": "clair3 model; x", "options": tricky},
                },
                "variant_effects": {"enabled": False},
            }
        },
    )
    proc = run_snakemake(tmp_path, "--configfile", "config/config.yaml", "config/test.yaml", "-n", "-p", "--cores", "2")
    commands = shell_commands(proc.stdout)
    [basecall] = commands["basecall"]
    assert contains(basecall, ["basecaller", "sup@v5.2.0"]) and contains(
        basecall, ["--models-directory", "dorado models"]
    )
    assert contains(basecall, words)
    reads = {"o1": "ont reads.fq", "p1": "results/genomics/p1/reads.bam"}
    assert sorted(argv[argv.index("--mm2-opts") + 3] for argv in commands["align_dorado"]) == sorted(reads.values())
    for argv in commands["align_dorado"]:
        assert contains(argv, ["--mm2-opts", "-k 15", "ref $(x).fa"])
    [parabricks] = commands["call_parabricks"]
    assert contains(parabricks, ["--ref", "ref $(x).fa"]) and contains(parabricks, words)
    assert len(commands["call_clair3"]) == 2
    for argv in commands["call_clair3"]:
        assert "--model_path=clair3 model; x" in argv and "--ref_fn=ref $(x).fa" in argv and contains(argv, words)
    assert markers_left(tmp_path) == []


def test_bcftools_options_reach_the_caller_as_one_argument_of_words(tmp_path):
    (tmp_path / "reads.fq").write_text("@r\nACGT\n+\nIIII\n")
    (tmp_path / "ref.fa").write_text(">c\nACGTACGT\n")
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "genomics.tsv").write_text("sample\tplatform\tfastq_1\ns1\tont\treads.fq\n")
    tricky = "--min-BQ 0 --annotate 'FORMAT/AD; $(touch pwned_config)'"
    write_config(
        tmp_path,
        {
            "genomics": {
                "samples": "sheets/genomics.tsv",
                "reference": "ref.fa",
                "variants": {"bcftools_options": tricky},
                "variant_effects": {"enabled": False},
            }
        },
    )
    proc = run_snakemake(tmp_path, "--configfile", "config/config.yaml", "config/test.yaml", "-n", "-p", "--cores", "1")
    [argv] = shell_commands(proc.stdout)["call_bcftools"]
    [option] = [word for word in argv if word.startswith("--options=")]
    assert shlex.split(option[len("--options=") :]) == [
        "--min-BQ",
        "0",
        "--annotate",
        "FORMAT/AD; $(touch pwned_config)",
    ]


# --------------------------------------------------------------------------- strict shell


def run_extra_rules(
    workdir: Path, snakefile: Path, project: Path, rules: str, *targets: str
) -> subprocess.CompletedProcess:
    """Run `rules` from `snakefile`, a main Snakefile that includes the `project` Snakefile (so
    its shell prefix applies; `workflow.basedir` is the folder of `snakefile`)."""
    write_config(workdir, {})
    snakefile.write_text(f"include: {str(project)!r}\n\n" + textwrap.dedent(rules))
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        "config/config.yaml",
        "config/test.yaml",
        "--cores",
        "1",
        "--keep-going",
        *targets,
    ]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)


def test_a_failing_command_inside_a_pipe_fails_the_job(tmp_path):
    """The project's shell prefix keeps bash's strict mode: `false | cat` fails, `true | cat` passes."""
    proc = run_extra_rules(
        tmp_path,
        tmp_path / "pipes.smk",
        REPO / "Snakefile",
        """\
        rule pipe_fails:
            output: "fails.txt"
            shell: "false | cat > {output}"

        rule pipe_passes:
            output: "passes.txt"
            shell: "true | cat > {output}"

        rule unset_variable:
            output: "unset.txt"
            shell: "echo $GPUBIO_SURELY_UNSET_VARIABLE > {output}"
    """,
        "fails.txt",
        "passes.txt",
        "unset.txt",
    )
    assert proc.returncode != 0
    assert (tmp_path / "passes.txt").exists()
    assert not (tmp_path / "fails.txt").exists() and not (tmp_path / "unset.txt").exists()
    assert "Error in rule pipe_fails" in proc.stderr and "Error in rule unset_variable" in proc.stderr


def test_a_checkout_in_a_folder_with_spaces_and_dollars_runs_its_own_package(tmp_path):
    """The prefix puts the checkout's workflow/ on PYTHONPATH quoted: jobs import that gpubio."""
    checkout = tmp_path / "lab's copy $(touch pwned_dollar)"
    for folder in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Snakefile", checkout / "Snakefile")
    workdir = tmp_path / "project"
    workdir.mkdir()
    proc = run_extra_rules(
        workdir,
        checkout / "which.smk",
        checkout / "Snakefile",
        """\
        rule which_gpubio:
            output: "gpubio.txt"
            shell: "python -c 'import gpubio; print(gpubio.__file__)' > {output}"
    """,
        "gpubio.txt",
    )
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "gpubio.txt").read_text().strip() == str(checkout / "workflow" / "gpubio" / "__init__.py")
    assert markers_left(tmp_path) == []
