"""Trained models shipped in the package: `pretrained:NAME` wherever a run folder is taken,
checksums checked at load, the model cards' metrics reproduced by `evaluate`."""

import json
import shutil

import numpy as np
import pytest

from molml_jax import pretrained
from molml_jax.errors import InputError
from molml_jax.pipelines import dna, segmentation, tf_binding
from molml_jax.pipelines.common import evaluate_split

from conftest import run_launcher

PIPELINES = {"dna": dna, "segmentation": segmentation, "tf_binding": tf_binding}
MODELS = pretrained.catalogue()


def test_every_pipeline_ships_a_model_with_a_card():
    assert {info["pipeline"] for info in MODELS.values()} == set(PIPELINES)
    for name, info in MODELS.items():
        card = (pretrained.root() / name / "MODEL_CARD.md").read_text()
        for section in ("Training command", "licence of the data", "split"):
            assert section in card, (name, section)
        assert set(info["sha256"]) == set(pretrained.CHECKED_FILES)
        # the card quotes the catalogue's headline number
        headline = next(v for k, v in info["metrics"].items() if isinstance(v, float))
        assert f"{headline:.4f}" in card, name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loads_with_checked_sha256_and_no_pickle(name):
    info = MODELS[name]
    pipeline = PIPELINES[info["pipeline"]]
    config, model, variables = pipeline.load_run(f"pretrained:{name}")
    assert isinstance(config, pipeline.Config) and config.out == f"pretrained:{name}"
    for path in ("data", "sequences", "scores", "pairs"):
        assert getattr(config, path, None) is None  # no machine path in a shipped config
    with np.load(pretrained.root() / name / "weights.npz", allow_pickle=False) as arrays:  # plain arrays only
        assert all(arrays[k].dtype != object for k in arrays.files)
    for file in pretrained.CHECKED_FILES:
        assert pretrained.sha256(pretrained.root() / name / file) == info["sha256"][file]


def test_a_changed_weights_file_is_refused(tmp_path):
    folder = tmp_path / "pretrained"
    shutil.copytree(pretrained.root(), folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    weights = folder / "dna-bilstm" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[-40] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"weights.npz: SHA-256 .* does not match models.json"):
        pretrained.load(dna, "pretrained:dna-bilstm", folder)
    pretrained.load(segmentation, "pretrained:unet-nuclei", folder)  # the others still load


def test_unknown_name_and_wrong_pipeline_are_one_line(capsys, tmp_path):
    with pytest.raises(InputError, match="unknown pretrained model 'nope'; available: .*dna-bilstm"):
        dna.load_run("pretrained:nope")
    with pytest.raises(InputError, match="pretrained:unet-nuclei is a segmentation model, not a dna one"):
        dna.load_run("pretrained:unet-nuclei")
    result = run_launcher("segmentation", "predict", "--checkpoint", "pretrained:nope", "--input", tmp_path,
                          "--output", tmp_path / "out", capsys=capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "available:" in result.stderr
    assert not (tmp_path / "out").exists()


def test_models_command_lists_shows_and_checks(capsys):
    listed = run_launcher("models", capsys=capsys)
    assert listed.returncode == 0
    for name in MODELS:
        assert name in listed.stdout
    shown = run_launcher("models", "show", "unet-nuclei", capsys=capsys)
    assert shown.returncode == 0 and "Training command" in shown.stdout
    bad = run_launcher("models", "show", "nope", capsys=capsys)
    assert bad.returncode == 2 and "available:" in bad.stderr


def test_dna_model_predicts_from_the_command_line(tmp_path, capsys):
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\n" + "ACGT" * 25 + "A\n>b\n" + "GATTACA" * 14 + "GAT\n")
    out = tmp_path / "p.csv"
    result = run_launcher("dna", "predict", "--checkpoint", "pretrained:dna-bilstm", "--input", fasta,
                          "--output", out, capsys=capsys)
    assert result.returncode == 0, result.stderr
    probability = np.loadtxt(out, delimiter=",", skiprows=1, usecols=2)
    assert probability.shape == (2,) and np.all((probability > 0) & (probability < 1))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_card_metrics_on_a_small_sample(name):
    """models.json's `sample`: the headline metric on the first examples of the card's split
    when the model was exported; the shipped weights give it again (fast; the whole split
    is the slow test below)."""
    info = MODELS[name]
    sample = pretrained.sample_metric(PIPELINES[info["pipeline"]], f"pretrained:{name}", info["metrics"]["split"])
    assert sample["n"] == info["sample"]["n"] and sample["metric"] == info["sample"]["metric"]
    assert sample["value"] == pytest.approx(info["sample"]["value"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_card_metrics_reproduced_by_evaluate_on_the_whole_split(name):
    info = MODELS[name]
    if info["pipeline"] == "segmentation":  # `evaluate --split test`: Dice, IoU, mAP and the objects
        record = segmentation.evaluate(f"pretrained:{name}", split=info["metrics"]["split"])
        metrics = {**record, "n": record["n_images"], "map": record["dsb_map"]}
    else:
        metrics, _, _ = evaluate_split(PIPELINES[info["pipeline"]], f"pretrained:{name}", info["metrics"]["split"])
    assert metrics["n"] == info["metrics"]["n"]
    for key, value in info["metrics"].items():
        if isinstance(value, float) and key in metrics:
            assert metrics[key] == pytest.approx(value, abs=2e-4), key


def test_the_package_ships_every_model_file():
    """setup.cfg's package_data, as setuptools reads it, takes the catalogue, the cards and
    the weights (and the bundled data) into a wheel."""
    from setuptools.config.setupcfg import read_configuration

    from conftest import REPO

    patterns = read_configuration(REPO / "setup.cfg")["options"]["package_data"]["molml_jax"]
    shipped = {str(p.relative_to(REPO / "molml_jax")) for pattern in patterns for p in (REPO / "molml_jax").glob(pattern)}
    for name in MODELS:
        for file in (*pretrained.CHECKED_FILES, "MODEL_CARD.md"):
            assert f"pretrained/{name}/{file}" in shipped
    assert "pretrained/models.json" in shipped and "data/bundled/dna_binding.csv" in shipped
    assert json.loads((pretrained.root() / "models.json").read_text()) == MODELS


def test_interpretation_verbs_take_pretrained_models(tmp_path, capsys):
    """attribute and variants through --checkpoint pretrained:NAME, as with a run folder."""
    fasta = tmp_path / "w.fa"
    rng = np.random.default_rng(0)
    fasta.write_text("".join(f">w{i}\n{''.join(rng.choice(list('ACGT'), 300))}\n" for i in range(2)))
    result = run_launcher("tf_binding", "attribute", "--checkpoint", "pretrained:tf-cnn-ctcf", "--input", fasta,
                          "--method", "saliency", "--output", tmp_path / "a.npz", capsys=capsys)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "a.npz", allow_pickle=False) as saved:
        assert saved["attributions"].shape == (2, 300, 4)
    genome = tmp_path / "g.fa"
    genome.write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 400)) + "\n")
    base = genome.read_text().splitlines()[1][199]
    (tmp_path / "v.tsv").write_text(f"chrom\tpos\tref\talt\nchr1\t200\t{base}\t{'A' if base != 'A' else 'C'}\n")
    result = run_launcher("dna", "variants", "--checkpoint", "pretrained:dna-bilstm", "--variants",
                          tmp_path / "v.tsv", "--reference", genome, "--output", tmp_path / "e.tsv", capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert "1 ok" in result.stdout
