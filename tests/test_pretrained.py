"""Every shipped checkpoint loads offline, its model card's test figures re-measure to 0.01 dB, timm
serves the 16-layer ones, and the loaders reject a problem whose operator has another shape."""

import fnmatch
import json
import logging

import pytest
import timm
import torch
from safetensors import safe_open

import models
from models.hub import checkpoints_dir
from models.hub.export import STORAGE_TOLERANCE_DB
from models.hub.imaging import verify_imaging_model
from models.reproduction import MODELS, SETTINGS
from models.timm_entrypoints import entrypoint_name
from unrolled.metrics import nmse_db, nmse_db_per_sample, psnr_db
from unrolled.problems import SparseCoding
from unrolled.solvers import fista

PRETRAINED = models.list_pretrained()


def _timm_name(name: str) -> str | None:
    """Return ``<network>_t16.<tag>`` for a shipped 16-layer checkpoint of a registered network, else None."""
    card = json.loads((checkpoints_dir() / f"{name}.json").read_text())
    network, _, tag = name.partition(".")
    if card["n_layers"] != 16 or card["network"] != network or network not in models.NETWORKS:
        return None
    return f"{entrypoint_name(network)}.{tag}"


SHIPPED_T16 = {name: _timm_name(name) for name in PRETRAINED if _timm_name(name) is not None}


def test_zoo_ships_the_required_models():
    """Every model of the reproduction grid on the reference problem, noiseless and at SNR 40 dB, and ALISTA and LISTA-CPSS on every setting."""
    reference = {f"{model}.{setting}" for model in MODELS for setting in ("sc250x500_noiseless", "sc250x500_snr40")}
    every_setting = {f"{model}.{setting}" for model in ("alista", "lista_cpss") for setting in SETTINGS}

    missing = sorted((reference | every_setting) - set(PRETRAINED))

    assert not missing, f"the zoo lacks {missing}"


def test_zoo_under_40_mb():
    # rglob: the imaging checkpoints in checkpoints/imaging/ count too.
    total = sum(path.stat().st_size for path in checkpoints_dir().rglob("*") if path.is_file())

    assert total < 40e6, f"checkpoints/ holds {total / 1e6:.1f} MB; the zoo must stay under 40 MB"


def test_cards_name_their_weights():
    for name in PRETRAINED:
        card = json.loads((checkpoints_dir() / f"{name}.json").read_text())

        assert card["weights_file"] == f"{name}.safetensors", name
        assert name.partition(".")[0] == card["network"], name


def test_weights_files_omit_operator():
    for name in PRETRAINED:
        card = json.loads((checkpoints_dir() / f"{name}.json").read_text())
        with safe_open(str(checkpoints_dir() / card["weights_file"]), "pt") as weights:
            keys = set(weights.keys())

        assert card["format"] == models.hub.CARD_FORMAT, name
        assert "A" not in keys, name
        assert abs(card["storage"]["rounding_shift_db"]) <= STORAGE_TOLERANCE_DB or card["storage"]["codec"] == "float32", name


@pytest.mark.parametrize("name", PRETRAINED)
def test_card_metrics_remeasure(name):
    loaded = models.load_pretrained(name)
    y, x = loaded.problem.fixed_set("test")
    assert loaded.card["test_metrics"]["dtype"] == "float64"
    with torch.no_grad():
        x_hats = loaded.network.double()(y)
    card = loaded.card["test_metrics"]["per_layer"]
    measured = [nmse_db(x_hat, x).item() for x_hat in x_hats]
    measured_per_sample = [nmse_db_per_sample(x_hat, x).item() for x_hat in x_hats]
    assert measured == pytest.approx(card["nmse_db"], abs=0.01)
    assert measured_per_sample == pytest.approx(card["nmse_db_per_sample"], abs=0.01)
    if "psnr_db" in card:
        signal = loaded.problem.signal(x)
        measured_psnr = [
            psnr_db(loaded.problem.signal(x_hat.double()), signal, loaded.problem.signal_range).item() for x_hat in x_hats
        ]
        assert measured_psnr == pytest.approx(card["psnr_db"], abs=0.01)


def test_image_model_card_has_psnr():
    image_models = [name for name in PRETRAINED if models.load_pretrained(name).problem.signal_range is not None]

    assert image_models
    for name in image_models:
        assert len(models.load_pretrained(name).card["test_metrics"]["per_layer"]["psnr_db"]) == 16


@pytest.mark.parametrize("name", PRETRAINED)
def test_card_records_provenance(name):
    card = models.load_pretrained(name).card
    assert card["command"]
    assert card["training"]["time_s"] > 0
    assert card["machine"]["cpu"]
    assert card["problem"]["test_seed"] != card["problem"]["train_seed"]


# reg values around the best FISTA reg at SNR 40 dB, which is about 3e-3 on this problem. The test
# checks that the best value is interior, so the grid brackets the optimum.
SNR40_REG_GRID = [1e-3, 2e-3, 3e-3, 4.5e-3, 7e-3]


@pytest.mark.slow
def test_alista_snr40_beats_fista_any_reg():
    loaded = models.load_pretrained("alista.sc250x500_snr40")
    y, x = loaded.problem.fixed_set("test")
    A = loaded.problem.A.to(torch.float32)
    regs = torch.tensor(SNR40_REG_GRID, dtype=torch.float32)
    batch = y.to(torch.float32).repeat(len(regs), 1)
    reg_per_sample = regs.repeat_interleave(y.shape[0])[:, None]

    solution = fista(A, batch, reg_per_sample, max_iter=10_000).x.reshape(len(regs), *x.shape)
    fista_nmse = [nmse_db(solution[i], x).item() for i in range(len(regs))]
    with torch.no_grad():
        alista_nmse = nmse_db(loaded.network.double()(y)[-1], x).item()

    best = min(range(len(regs)), key=fista_nmse.__getitem__)
    assert 0 < best < len(regs) - 1, fista_nmse
    assert alista_nmse <= fista_nmse[best], (alista_nmse, fista_nmse)


def test_zoo_ships_16_layer_models():
    assert {"alista.sc250x500_noiseless", "lista_cp.sc250x500_noiseless"} <= set(SHIPPED_T16)


@pytest.mark.parametrize("name", sorted(SHIPPED_T16))
def test_timm_pretrained_bit_identical(name):
    from_timm = timm.create_model(SHIPPED_T16[name], pretrained=True)
    from_hub = models.load_pretrained(name).network

    assert type(from_timm) is type(from_hub)
    assert not from_timm.training
    assert from_timm.state_dict().keys() == from_hub.state_dict().keys()
    for key, value in from_hub.state_dict().items():
        assert from_timm.state_dict()[key].dtype == value.dtype, key
        assert torch.equal(from_timm.state_dict()[key], value), key


def test_timm_lists_shipped_models():
    listed = timm.list_models("*lista*", pretrained=True)

    assert set(fnmatch.filter(SHIPPED_T16.values(), "*lista*")) <= set(listed)
    assert "alista_t16.sc250x500_noiseless" in listed
    assert set(SHIPPED_T16.values()) <= set(timm.list_models(pretrained=True))


def test_timm_lists_entrypoints():
    listed = timm.list_models("*lista*")

    assert {"alista_t16", "lista_t16", "lista_cp_t16"} <= set(listed)
    assert set(fnmatch.filter([entrypoint_name(name) for name in models.NETWORKS], "*lista*")) <= set(listed)


def test_load_pretrained_problem_shape_mismatch():
    with pytest.raises(ValueError, match="alista.sc250x500_noiseless was trained for an operator A of shape") as error:
        models.load_pretrained("alista.sc250x500_noiseless", problem=SparseCoding(m=50, n=100, n_val=8, n_test=8))

    message = str(error.value)
    assert "(250, 500)" in message
    assert "(50, 100)" in message


def test_load_pretrained_other_operator_warns(caplog):
    other = SparseCoding(operator_seed=11, n_val=8, n_test=8)

    with caplog.at_level(logging.WARNING, logger="models.hub"):
        loaded = models.load_pretrained("alista.sc250x500_noiseless", problem=other)

    assert (
        "alista.sc250x500_noiseless: the weights were learned for another operator A of the same shape (250, 500)" in caplog.text
    )
    assert loaded.problem is other


def test_load_pretrained_card_problem_silent(caplog):
    card_problem = models.load_pretrained("alista.sc250x500_snr40").card["problem"]

    with caplog.at_level(logging.INFO, logger="models.hub"):
        loaded = models.load_pretrained("alista.sc250x500_snr40", problem=card_problem)

    assert caplog.records == []
    assert loaded.problem.spec() == card_problem


def test_pretrained_wrong_measurement_length():
    network = models.load_pretrained("alista.sc250x500_noiseless").network

    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., m\) with m = A.shape\[0\] = 250, got shape \(4, 500\)"):
        network(torch.zeros(4, 500))


IMAGING_PRETRAINED = models.list_imaging_pretrained()


def test_zoo_ships_one_imaging_model_per_family():
    networks = {name.partition(".")[0] for name in IMAGING_PRETRAINED}
    assert {"ista_net_plus", "admm_net", "pgd_cnn"} <= networks


@pytest.mark.parametrize("name", IMAGING_PRETRAINED)
def test_imaging_card_metrics_remeasure(name):
    verification = verify_imaging_model(name)

    assert verification.error is None, verification.error
    assert verification.max_psnr_deviation_db <= 0.1
    assert verification.max_ssim_deviation <= 1e-3
