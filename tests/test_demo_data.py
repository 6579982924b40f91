"""The demo generator's planted truth is what it claims to be."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pysam
import pytest
import tifffile
from scipy import ndimage

from conftest import REPO
from gpubio.demo import sheet_text


@pytest.fixture(scope="module")
def demo(demo_data):
    return demo_data / "resources" / "demo"


def test_committed_sample_sheets_match_the_generator(demo_data):
    import os

    from gpubio.demo import make_demo

    cwd = os.getcwd()
    os.chdir(demo_data)
    try:  # a second run with the same seed: same sheets, same bytes
        rows = make_demo("resources/demo_again", seed=1)
    finally:
        os.chdir(cwd)
    for domain, domain_rows in rows.items():
        fixed = {s: {k: v.replace("demo_again", "demo") for k, v in r.items()} for s, r in domain_rows.items()}
        assert (REPO / "config" / "demo" / f"{domain}.tsv").read_text() == sheet_text(domain, fixed)
    again = demo_data / "resources" / "demo_again"
    for rel in [
        "genomics/illumina_R1.fastq.gz",
        "genomics/truth.vcf",
        "transcriptomics/pbmc2/matrix.mtx.gz",
        "transcriptomics/pbmc1_spatial.csv",
        "imaging/nuclei1.tif",
        "imaging/train/train3_masks.tif",
    ]:
        digest = [hashlib.sha256((d / rel).read_bytes()).hexdigest() for d in (demo_data / "resources" / "demo", again)]
        assert digest[0] == digest[1], f"{rel} differs between two runs with the same seed"


def test_truth_vcf_matches_reference_and_reads(demo):
    fasta = pysam.FastaFile(str(demo / "genomics" / "reference.fa"))
    assert dict(zip(fasta.references, fasta.lengths)) == {"chr1": 30_000, "chr2": 20_000}
    variants = list(pysam.VariantFile(str(demo / "genomics" / "truth.vcf")))
    snps = [v for v in variants if len(v.ref) == len(v.alts[0])]
    indels = [v for v in variants if len(v.ref) != len(v.alts[0])]
    assert len(snps) >= 40 and len(indels) >= 8
    for v in variants:
        assert fasta.fetch(v.chrom, v.start, v.stop) == v.ref  # REF is the reference sequence
    # every planted SNP's ALT allele is carried by the ONT reads: look up a 31-mer around it
    genotype = {(v.chrom, v.pos): v.samples[0]["GT"] for v in variants}
    reads = "|".join(r.sequence for r in pysam.FastxFile(str(demo / "genomics" / "ont.fastq.gz")))
    comp = str.maketrans("ACGT", "TGCA")
    reads += "|" + reads.translate(comp)[::-1]
    found = 0
    for v in snps:
        left, right = fasta.fetch(v.chrom, v.start - 15, v.start), fasta.fetch(v.chrom, v.stop, v.stop + 15)
        found += (left + v.alts[0] + right) in reads
        assert genotype[(v.chrom, v.pos)] in [(0, 1), (1, 1)]
    assert found >= 0.95 * len(snps)


def test_read_qc_truth_is_recomputable(demo):
    truth = json.loads((demo / "genomics" / "ont1.truth.json").read_text())
    lengths = [len(r.sequence) for r in pysam.FastxFile(str(demo / "genomics" / "ont.fastq.gz"))]
    assert truth["reads"] == len(lengths) and truth["bases"] == sum(lengths)
    ordered = sorted(lengths, reverse=True)
    cumulative = np.cumsum(ordered)
    assert truth["n50"] == ordered[int(np.searchsorted(cumulative, cumulative[-1] / 2))]
    assert 15 <= truth["mean_quality"] <= 25  # ONT-like qualities


def test_cells_types_markers_and_planted_low_quality(demo):
    import scanpy as sc

    truth = json.loads((demo / "transcriptomics" / "truth.json").read_text())
    labels = pd.read_csv(demo / "transcriptomics" / "cell_types.tsv", sep="\t")
    adata = sc.read_10x_h5(demo / "transcriptomics" / "pbmc1.h5")
    assert adata.shape == (truth["samples"]["pbmc1"]["cells"], truth["samples"]["pbmc1"]["genes"])
    obs = labels[labels["sample"] == "pbmc1"].set_index("barcode").loc[adata.obs_names]
    assert set(obs["cell_type"]) == set(truth["cell_types"]) and len(truth["cell_types"]) == 4
    X = adata.X.toarray()
    norm = X / X.sum(axis=1, keepdims=True)
    for cell_type, markers in truth["markers"].items():
        idx = adata.var_names.get_indexer(markers)
        inside = norm[(obs["cell_type"] == cell_type).to_numpy()][:, idx].mean()
        outside = norm[(obs["cell_type"] != cell_type).to_numpy()][:, idx].mean()
        assert inside > 4 * outside, cell_type
    mito = adata.var_names.str.startswith("MT-")
    assert mito.sum() == 13
    pct = 100 * X[:, mito].sum(axis=1) / X.sum(axis=1)
    flagged = (obs["quality"] == "high_mito").to_numpy()
    assert pct[flagged].min() > 40 and pct[~flagged].max() < 20
    assert truth["samples"]["pbmc1"]["cells_after_qc"] == int((obs["quality"] == "ok").sum())


def test_batches_differ_and_reference_is_labelled(demo):
    import anndata as ad
    import scanpy as sc

    a = sc.read_10x_h5(demo / "transcriptomics" / "pbmc1.h5")
    b = sc.read_10x_mtx(demo / "transcriptomics" / "pbmc2")
    assert list(a.var_names) == list(b.var_names)
    mean_a = np.asarray(a.X.mean(axis=0)).ravel()
    mean_b = np.asarray(b.X.mean(axis=0)).ravel()
    expressed = (mean_a > 1) & (mean_b > 1)
    assert np.std(np.log(mean_b[expressed] / mean_a[expressed])) > 0.2  # planted batch effect
    ref = ad.read_h5ad(demo / "transcriptomics" / "reference.h5ad")
    assert ref.n_obs == 800 and ref.obs["cell_type"].nunique() == 4


def test_spatial_same_type_neighbours(demo):
    labels = pd.read_csv(demo / "transcriptomics" / "cell_types.tsv", sep="\t")
    labels = labels[labels["sample"] == "pbmc1"].set_index("barcode")
    xy = pd.read_csv(demo / "transcriptomics" / "pbmc1_spatial.csv").set_index("barcode")
    types = labels.loc[xy.index, "cell_type"].to_numpy()
    from scipy.spatial import cKDTree

    _, nn = cKDTree(xy[["x", "y"]].to_numpy()).query(xy[["x", "y"]].to_numpy(), k=2)
    same = (types[nn[:, 1]] == types).mean()
    assert same > 0.7  # vs 0.25 by chance with four balanced types


def test_images_masks_and_reference_transform(demo):
    truth = json.loads((demo / "imaging" / "truth.json").read_text())
    image = tifffile.imread(demo / "imaging" / "nuclei1.tif")
    masks = tifffile.imread(demo / "imaging" / "nuclei1_masks.tif")
    reference = tifffile.imread(demo / "imaging" / "nuclei1_reference.tif")
    assert image.shape == (2, 256, 256) and image.dtype == np.uint16
    assert len(np.unique(masks)) - 1 == truth["nuclei1"]["cells"] == 40
    # nuclei are bright where the masks say
    assert image[0][masks > 0].mean() > 5 * image[0][masks == 0].mean()
    t = truth["nuclei1"]["reference_transform"]
    theta = np.deg2rad(t["rotation_deg"])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = np.array(t["centre_rc"])
    offset = centre - rot @ centre + np.array(t["translation_rc"])
    warped = ndimage.affine_transform(image[0].astype(float), rot, offset=offset, order=1)

    def ncc(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    ref = reference[0].astype(float)
    assert ncc(warped[20:-20, 20:-20], ref[20:-20, 20:-20]) > 0.9
    assert ncc(image[0].astype(float), ref) < 0.5  # they do differ before alignment
    ome = tifffile.imread(demo / "imaging" / "nuclei2.ome.tif")
    assert truth["nuclei2"]["saturated_fraction"][0] == pytest.approx(float((ome[0] == 65535).mean()))
    assert truth["nuclei2"]["saturated_fraction"][0] > 0.01
    train = sorted((demo / "imaging" / "train").glob("*_masks.tif"))
    assert len(train) == 8 and all(tifffile.imread(p).max() == 12 for p in train)
