"""Unit tests of the three first QC steps on small hand-made inputs."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pysam
import pytest
import scipy.sparse as sp
import tifffile

from gpubio.genomics.read_qc import n50, read_qc
from gpubio.image_io import read_image
from gpubio.imaging.qc import image_qc
from gpubio.transcriptomics.qc import filter_cells


@pytest.mark.parametrize(
    "lengths, expected",
    [([100], 100), ([2, 3, 4, 5, 6, 7, 8, 9, 10], 8), ([1000, 10, 10, 10], 1000), ([], 0), ([5, 5, 5, 5], 5)],
)
def test_n50(lengths, expected):
    assert n50(lengths) == expected


def test_read_qc_fastq_and_bam_agree(tmp_path):
    fq = tmp_path / "r.fastq"
    fq.write_text("@a\nACGTACGTAC\n+\n" + "I" * 10 + "\n@b\nACGTA\n+\n" + "+" * 5 + "\n")  # Q40 x10, Q10 x5
    header = {"HD": {"VN": "1.6"}, "SQ": [{"SN": "c", "LN": 100}]}
    bam = tmp_path / "r.bam"
    with pysam.AlignmentFile(str(bam), "wb", header=header) as out:
        for name, seq, q in [("a", "ACGTACGTAC", 40), ("b", "ACGTA", 10)]:
            rec = pysam.AlignedSegment(out.header)
            rec.query_name, rec.query_sequence, rec.flag = name, seq, 4
            rec.query_qualities = pysam.qualitystring_to_array(chr(q + 33) * len(seq))
            out.write(rec)
        secondary = pysam.AlignedSegment(out.header)
        secondary.query_name, secondary.query_sequence, secondary.flag = "a", "ACGT", 256 | 4
        out.write(secondary)  # secondary records are not reads of their own
    for path in (fq, bam):
        result = read_qc([str(path)])
        assert result["reads"] == 2 and result["bases"] == 15 and result["n50"] == 10
        assert result["mean_quality"] == pytest.approx((40 * 10 + 10 * 5) / 15)


def test_cell_filter_counts_each_reason():
    genes = ["G1", "G2", "G3", "MT-1"]
    X = np.array(
        [
            [300, 300, 300, 10],  # ok
            [10, 10, 10, 1],  # low counts
            [300, 300, 0, 500],  # high mito
            [900, 0, 0, 0],  # one gene only
        ]
    )
    adata = ad.AnnData(sp.csr_matrix(X.astype(np.float32)))
    adata.var_names = genes
    filtered, summary = filter_cells(
        adata, min_genes=2, min_counts=100, max_mito_pct=20, min_cells=1, mito_prefix="MT-"
    )
    assert summary["removed"] == {"low_counts": 1, "low_genes": 1, "high_mito": 1}
    assert summary["cells_after_qc"] == 1 and filtered.n_obs == 1
    assert summary["total_counts"] == int(X.sum())
    assert filtered.n_vars == 4


@pytest.mark.parametrize(
    "shape, axes, expected",
    [
        ((32, 48), "YX", (1, 32, 48)),
        ((3, 32, 48), "CYX", (3, 32, 48)),
        ((32, 48, 3), "YXS", (3, 32, 48)),
        ((5, 2, 32, 48), "ZCYX", (2, 32, 48)),
    ],
)
def test_read_image_axes(tmp_path, shape, axes, expected):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, data, photometric="rgb" if axes == "YXS" else "minisblack", metadata={"axes": axes})
    image, _ = read_image(str(path))
    assert image.shape == expected
    if axes == "ZCYX":  # maximum projection over Z
        assert image.max() == data.max() and np.array_equal(image, data.max(axis=0))


def test_image_qc_saturation(tmp_path):
    data = np.full((2, 20, 20), 100, dtype=np.uint16)  # 20 px: smaller images are refused
    data[0, :4, :] = 65535  # 20 % saturated in channel 0
    tifffile.imwrite(tmp_path / "s.tif", data, metadata={"axes": "CYX"})
    result = image_qc(str(tmp_path / "s.tif"), max_saturated_fraction=0.1)
    assert result["shape"] == [20, 20] and result["channels"] == 2
    assert result["saturated_fraction"] == [0.2, 0.0]
    assert result["min"] == [100, 100] and result["max"] == [65535, 100]
    assert result["saturation_flag"] is True
    json.dumps(result)  # plain JSON types only
