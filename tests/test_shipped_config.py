"""The shipped configuration is a lab's starting point: real-data defaults, sheets to fill,
and the demo only as an overlay."""

from __future__ import annotations

import re
import shutil

import yaml

from conftest import DEMO_OVERLAY, REPO, run_snakemake
from gpubio.config import load_schema, read_project

SHEETS = ("genomics", "transcriptomics", "imaging", "histopathology")


def shipped() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_names_no_demo_file():
    text = (REPO / "config" / "config.yaml").read_text()
    assert "resources/demo" not in text
    assert "enformer_tiny" not in text


def test_shipped_values_follow_real_data_practice():
    config = shipped()
    transcriptomics = config["transcriptomics"]
    assert transcriptomics["cluster"]["n_top_genes"] == 2000  # scanpy / Seurat practice
    assert transcriptomics["annotation"]["scanvi"]["n_top_genes"] == 2000
    assert transcriptomics["annotation"]["reference"] == ""
    effects = config["genomics"]["variant_effects"]
    assert effects["sequence_length"] == 196_608  # the published Enformer's window
    assert config["genomics"]["reference"] == ""


def test_shipped_sheets_are_templates_with_the_schema_columns(tmp_path):
    """Each sheet holds a header and commented examples only (module off); the examples,
    uncommented, are rows of the right shape: the only problems are their made-up files."""
    for domain in SHEETS:
        text = (REPO / "config" / f"{domain}.tsv").read_text()
        header, *rest = text.splitlines()
        assert set(load_schema(domain)["required"]) <= set(header.split("\t"))
        examples = [line[2:] for line in rest if line.startswith("# ") and "\t" in line]
        assert examples, f"config/{domain}.tsv has no commented example row"
        assert all(line.startswith("#") for line in rest)
        (tmp_path / "config").mkdir(exist_ok=True)
        (tmp_path / "config" / f"{domain}.tsv").write_text("\n".join([header, *examples]) + "\n")
    config = shipped()
    config["genomics"]["reference"] = "ref.fa"
    (tmp_path / "ref.fa").write_text(">chr1\nACGT\n")
    project, problems, _ = read_project(config, "config/config.yaml", tmp_path)
    assert problems and all("does not exist" in p for p in problems), problems
    assert {p.split(":")[0].split(" row")[0] for p in problems} == {f"config/{d}.tsv" for d in SHEETS}


def test_dry_run_of_the_shipped_config_says_every_module_is_off(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    proc = run_snakemake(tmp_path, "-n")
    first = next(line for line in proc.stderr.splitlines() if line.startswith("gpubio:"))
    assert first.startswith("gpubio: every module is off: ")
    for domain in SHEETS:
        assert f"{domain} (its sheet config/{domain}.tsv has no rows)" in first
    assert "make demo" in first
    # no job but the default target itself
    assert re.search(r"^all\s+1$", proc.stdout, re.M) and re.search(r"^total\s+1$", proc.stdout, re.M)


def test_dry_run_names_the_modules_on_and_off(tmp_path, demo_data):
    """The demo overlay, as `make demo` passes it: three modules on, histopathology off."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "demo").symlink_to(demo_data / "resources" / "demo")
    proc = run_snakemake(tmp_path, "-n", "--configfile", DEMO_OVERLAY)
    first = next(line for line in proc.stderr.splitlines() if line.startswith("gpubio:"))
    assert first == (
        "gpubio: modules on: genomics (2 samples), transcriptomics (2 samples), imaging (2 samples); "
        "off: histopathology (its sheet config/demo/histopathology.tsv has no rows)"
    )
    assert "train_cellpose" in proc.stdout and "variant_effects" in proc.stdout


def test_demo_overlay_sets_only_known_keys_and_differs_from_the_defaults():
    """The overlay holds what the demo needs beyond the shipped config, nothing repeated."""
    base, overlay = shipped(), yaml.safe_load((REPO / DEMO_OVERLAY).read_text())

    def walk(node, other, path):
        for key, value in node.items():
            assert key in other or path == () and key in SHEETS, f"{'.'.join(path + (key,))} is not in config.yaml"
            if isinstance(value, dict):
                walk(value, other.get(key, {}), path + (key,))
            else:
                assert other.get(key) != value, f"{'.'.join(path + (key,))} repeats the shipped value"

    walk(overlay, base, ())


def test_problems_name_the_layer_that_sets_the_key(tmp_path, demo_data):
    """With the demo overlay, a typo in config/config.yaml is config/config.yaml's problem and a
    bad value in the overlay is the overlay's; a key no layer sets is the base file's to add."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "demo").symlink_to(demo_data / "resources" / "demo")
    base = tmp_path / "config" / "config.yaml"
    base.write_text(base.read_text().replace("    min_genes: 200", "    min_gens: 200"))
    overlay = yaml.safe_load((REPO / DEMO_OVERLAY).read_text())
    overlay["transcriptomics"]["cluster"]["n_top_genes"] = -5
    del overlay["genomics"]["reference"]
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    proc = run_snakemake(tmp_path, "-n", "--configfile", "overlay.yaml", check=False)
    assert proc.returncode != 0
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()]
    assert "config/config.yaml: unknown key 'transcriptomics.qc.min_gens'; did you mean 'min_genes'?" in lines
    assert any(
        line.startswith("overlay.yaml: key 'transcriptomics.cluster.n_top_genes' = -5 is out of range")
        for line in lines
    ), lines
    assert "config/config.yaml: genomics has samples but no 'reference'; add genomics.reference: <FASTA>" in lines


def test_shipped_config_shows_every_setting_of_the_schema():
    """A lab reads config/config.yaml, not the schema: every setting is there to edit."""
    from gpubio.config import load_schema

    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

    def leaves(node, prefix=""):
        for key, entry in (node.get("properties") or {}).items():
            if entry.get("type") == "object" and entry.get("properties"):
                yield from leaves(entry, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    missing = []
    for section, schema in load_schema("config")["properties"].items():
        for key in leaves(schema) if schema.get("type") == "object" else ():
            node = shipped.get(section)
            for part in key.split("."):
                node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
            if node is KeyError:
                missing.append(f"{section}.{key}")
    assert missing == []
