"""One declaration per step (gpubio.steps): each setting's default, type, help and flag live in
the schema; the subcommands' options and the rules' command words come from there."""

from __future__ import annotations

import argparse
import shlex

import pytest
import yaml

from conftest import REPO
from gpubio.cli import build_parser
from gpubio.config import section_settings
from gpubio.steps import StepOption, declared_steps, options_of, step_options

SCHEMAS = REPO / "workflow" / "schemas"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def schema_entry(domain: str, key: str) -> dict:
    """The schema entry of a dotted key, read from the YAML file here (not through gpubio.steps)."""
    node = yaml.safe_load((SCHEMAS / f"config.{domain}.schema.yaml").read_text())
    for part in key.split("."):
        node = node["properties"][part]
    return node


def test_every_cli_default_is_the_schema_default_for_every_subcommand():
    checked = 0
    for name, parser in subcommands().items():
        flags = {flag: action for action in parser._actions for flag in action.option_strings}
        for option in options_of(name):
            action = flags[option.flag]  # every declared setting is an option of its subcommand
            expected = schema_entry(option.domain, option.key).get("default")
            assert action.default == expected, f"{name} {option.flag}: {action.default!r} != schema {expected!r}"
            checked += 1
    assert checked >= 80  # every domain's steps: imaging, transcriptomics, genomics, histopathology


def test_every_declared_step_is_a_subcommand_or_a_tool():
    names = set(subcommands())
    assert set(declared_steps()) - names == {"dorado-basecaller"}  # the flags of dorado's own CLI


def test_no_subcommand_option_writes_a_setting_default_of_its_own():
    """A hand-written option with the same flag as a setting of its step would shadow the schema."""
    for name, parser in subcommands().items():
        declared = [o.flag for o in options_of(name)]
        strings = [flag for action in parser._actions for flag in action.option_strings]
        assert all(strings.count(flag) == 1 for flag in declared), name


def test_restore_image_tile_size_is_the_schemas_1024():
    args = subcommands()["restore-image"].parse_args(
        ["in.tif", "--model", "m", "--out-image", "o", "--out-json", "j", "--out-png", "p"]
    )
    assert args.tile_size == 1024 and args.tile_overlap == 64
    help_text = subcommands()["restore-image"].format_help()
    assert "imaging.restoration.tile_size; default: 1024" in " ".join(help_text.split())


def test_values_become_the_words_the_command_expects():
    def option(flag, **entry):
        return StepOption("imaging", "x", flag, entry)

    hostile = "T cells; $(touch owned)"
    assert option("--label", type="string").words(hostile) == ["--label", hostile]
    assert option("--rate", type="number").words(0.25) == ["--rate", "0.25"]
    assert option("--whole", type="number").words(3.0) == ["--whole", "3"]
    assert option("--scale", type="boolean").words(False) == ["--no-scale"]
    assert option("--files", type="array").words(["a b.txt", "c.txt"]) == ["--files", "a b.txt", "c.txt"]
    assert option("--unset", type="string").words("") == [] and option("--n", type="integer").words(None) == []
    # an empty list where the default has items is said, not left to the default
    assert option("--copies", type="array", default=[0.5, 2.0]).words([]) == ["--copies"]
    assert option("--files", type="array", default=[]).words([]) == []


def test_each_domains_rule_words_written_out():
    imaging = section_settings(
        {"imaging": {"training": {"base_model": "my model.pt", "steps": 5, "seed": 9}}}, "imaging"
    )
    words = shlex.split(step_options(imaging, "train-cellpose"))
    assert words[words.index("--base-model") + 1] == "my model.pt"  # one word, quoted
    assert words[words.index("--steps") + 1] == "5" and words[words.index("--seed") + 1] == "9"
    assert "--learning-rate" not in words  # null: the installed Cellpose's default
    genomics = section_settings(
        {"genomics": {"variant_effects": {"family": "deepsea", "sequence_length": 1000}}}, "genomics"
    )
    assert step_options(genomics, "variant-effects") == (
        "--family deepsea --sequence-length 1000 --batch-size 2 --head human"
    )
    tx = section_settings({"transcriptomics": {"qc": {"min_genes": 50, "mito_prefix": "mt-"}}}, "transcriptomics")
    assert step_options(tx, "cell-qc") == (
        "--min-genes 50 --min-counts 500 --max-mito-pct 20 --min-cells 3 --mito-prefix mt-"
    )


@pytest.mark.parametrize(
    "step", ["segment-cells", "train-cellpose", "integrate-cells", "annotate-scanvi", "tile-slide", "variant-effects"]
)
def test_the_rules_words_parse_back_to_the_configured_values(step):
    """What a rule writes is what its subcommand reads: every setting arrives with its value."""
    option = options_of(step)[0]
    settings = section_settings({}, option.domain)
    parser = subcommands()[step]
    required = [a for a in parser._actions if a.required or (not a.option_strings and a.dest != "help")]
    fill = []
    for action in required:
        value = ["x"] * (action.nargs if isinstance(action.nargs, int) else 1)
        fill += ([action.option_strings[0]] if action.option_strings else []) + value
    args = parser.parse_args(fill + shlex.split(step_options(settings, step)))
    for opt in options_of(step):
        node = settings
        for part in opt.key.split("."):
            node = node[part]
        assert getattr(args, opt.dest) == (node if node != "" else opt.default), opt.flag


def test_every_subcommands_help_shows_each_settings_config_key_and_default():
    for name, parser in subcommands().items():
        text = " ".join(parser.format_help().split())
        for option in options_of(name):
            assert f"config: {option.config_key}; default: {option.default}" in text, (name, option.flag)
