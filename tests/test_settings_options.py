"""One way from settings to command-line options (gpubio.shell.settings_options), used by
every domain's step tables: values are shell words, never commands."""

from __future__ import annotations

import shlex

from gpubio.shell import Flag, settings_options


def test_each_kind_of_value_becomes_the_words_the_command_expects():
    settings = {
        "label": "T cells; $(touch owned)",
        "rate": 0.25,
        "whole": 3.0,
        "count": 7,
        "scale": False,
        "harmony": True,
        "download": False,
        "channels": [2, 1],
        "files": ["a b.txt", "c.txt"],
        "unset": "",
        "nothing": None,
        "nested": {"depth": 4},
    }
    table = {
        "label": "--label",
        "rate": "--rate",
        "whole": "--whole",
        "count": "--count",
        "scale": "--scale",
        "harmony": "--harmony",
        "download": Flag("--download", negatable=False),
        "channels": "--channels",
        "files": Flag("--file", each=True),
        "unset": "--unset",
        "nothing": "--nothing",
        "missing": "--missing",
        "nested.depth": "--depth",
    }
    text = settings_options(settings, table)
    assert text == (
        "--label 'T cells; $(touch owned)' --rate 0.25 --whole 3 --count 7 --no-scale --harmony"
        " --channels 2 1 --file 'a b.txt' --file c.txt --depth 4"
    )
    # the shell gives the tool exactly these words: the hostile label stays one argument
    assert shlex.split(text)[1] == "T cells; $(touch owned)"


def test_step_tables_of_each_domain_build_their_commands():
    from gpubio.genomics.sheet import VARIANT_EFFECTS_OPTIONS
    from gpubio.imaging.settings import TRAINING_OPTIONS
    from gpubio.transcriptomics.settings import CELL_QC_OPTIONS

    effects = {"family": "deepsea", "sequence_length": 1000, "batch_size": 4, "head": "human", "track_names": ""}
    assert settings_options(effects, VARIANT_EFFECTS_OPTIONS) == (
        "--family deepsea --sequence-length 1000 --batch-size 4 --head human"
    )
    qc = {"qc": {"min_genes": 50, "min_counts": 90, "max_mito_pct": 12.5, "min_cells": 2, "mito_prefix": "mt-"}}
    assert settings_options(qc, CELL_QC_OPTIONS) == (
        "--min-genes 50 --min-counts 90 --max-mito-pct 12.5 --min-cells 2 --mito-prefix mt-"
    )
    imaging = {
        "segmentation": {"channels": [3, 0], "download_models": True},
        "training": {
            "base_model": "my model.pt",
            "steps": 5,
            "batch_size": 2,
            "seed": 9,
            "learning_rate": None,
            "weight_decay": 1e-05,
            "crop_size": None,
        },
    }
    assert settings_options(imaging, TRAINING_OPTIONS) == (
        "--channels 3 0 --base-model 'my model.pt' --steps 5 --batch-size 2 --seed 9"
        " --weight-decay 1e-05 --download-models"
    )
