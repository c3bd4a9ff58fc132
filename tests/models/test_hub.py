"""Export, list and load checkpoints: round trips, sha256 verification, card validation, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models import build_network, export_model, list_pretrained, load_pretrained, load_run
from models.hub import CARD_FILE, WEIGHTS_FILE, checkpoints_dir, refresh_test_metrics, sha256_file
from unrolled.metrics import nmse_db
from unrolled.problems import SparseCoding

pytestmark = pytest.mark.usefixtures("zoo_checkpoints")

N_LAYERS = 3
NETWORK_KWARGS = {"reg": 0.2, "step_size": 0.9}


@pytest.fixture
def network(small_problem):
    """ALISTA with parameters moved away from their initial values, so a load that rebuilds from scratch fails."""
    torch.manual_seed(0)
    network = build_network("alista", small_problem.A.to(torch.float32), N_LAYERS, **NETWORK_KWARGS)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1 + 0.2 * torch.rand_like(parameter))
    return network


@pytest.fixture
def measurements(small_problem) -> torch.Tensor:
    y, _ = small_problem.fixed_set("test")
    return y.to(torch.float32)


def _export(folder: Path, network, problem, stem: str | None = None) -> Path:
    extra = {"test_metrics": {"split": "test", "per_layer": {"nmse_db": [-1.0, -2.0, -3.0]}}}
    return export_model(folder, "alista", network, NETWORK_KWARGS, problem, extra, stem=stem)


def _edit_card(card_path: Path, **changes) -> None:
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def test_checkpoints_dir_from_env(zoo_checkpoints):
    assert checkpoints_dir() == zoo_checkpoints


def test_export_load_run_roundtrip(tmp_path, network, small_problem, measurements):
    _export(tmp_path, network, small_problem)

    loaded = load_run(tmp_path)

    assert loaded.name == tmp_path.name
    assert type(loaded.network) is type(network)
    assert loaded.network.n_layers == N_LAYERS
    assert not loaded.network.training
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key
    assert torch.equal(loaded.network(measurements), network(measurements))


def test_export_card_contents(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)

    card = json.loads(card_path.read_text())

    assert card_path == tmp_path / CARD_FILE
    assert card["network"] == "alista"
    assert card["n_layers"] == N_LAYERS
    assert card["network_kwargs"] == NETWORK_KWARGS
    assert card["problem"] == small_problem.spec()
    assert card["weights_file"] == WEIGHTS_FILE
    assert card["sha256"] == sha256_file(tmp_path / WEIGHTS_FILE)
    assert card["test_metrics"]["per_layer"]["nmse_db"] == [-1.0, -2.0, -3.0]
    assert card["machine"]["versions"]["torch"] == torch.__version__.split("+")[0]


def test_export_no_temporary_files(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)
    _export(tmp_path, network, small_problem)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([CARD_FILE, WEIGHTS_FILE])


def test_loaded_problem_regenerates_test_set(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)

    y, x = load_run(tmp_path).problem.fixed_set("test")

    y_expected, x_expected = SparseCoding(m=50, n=100, n_val=64, n_test=64).fixed_set("test")
    assert torch.equal(y, y_expected)
    assert torch.equal(x, x_expected)


def test_load_run_missing_card(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {CARD_FILE} in {tmp_path}"):
        load_run(tmp_path)


def test_list_pretrained_sorted(zoo_checkpoints, network, small_problem):
    _export(zoo_checkpoints, network, small_problem, stem="lista_cp.b")
    _export(zoo_checkpoints, network, small_problem, stem="alista.a")

    assert list_pretrained() == ["alista.a", "lista_cp.b"]


def test_list_pretrained_missing_folder(zoo_checkpoints):
    assert not zoo_checkpoints.exists()
    assert list_pretrained() == []


def test_load_pretrained_matches_export(zoo_checkpoints, network, small_problem, measurements):
    _export(zoo_checkpoints, network, small_problem, stem="alista.tiny")

    loaded = load_pretrained("alista.tiny")

    assert loaded.name == "alista.tiny"
    assert loaded.card["weights_file"] == "alista.tiny.safetensors"
    assert torch.equal(loaded.network(measurements), network(measurements))


def test_load_pretrained_unknown_name(zoo_checkpoints, network, small_problem):
    _export(zoo_checkpoints, network, small_problem, stem="alista.tiny")

    with pytest.raises(ValueError, match=r"unknown pretrained model 'alista\.tinny'\. Close matches: alista\.tiny\."):
        load_pretrained("alista.tinny")


def test_load_pretrained_empty_folder():
    with pytest.raises(ValueError, match=r"unknown pretrained model 'alista\.tiny'\. Available: none\."):
        load_pretrained("alista.tiny")


def test_sha256_mismatch_garbage(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)
    # Bytes that are not a safetensors file: were they read before the hash check, the error would be
    # a safetensors parse error instead of the sha256 mismatch.
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")

    with pytest.raises(ValueError, match=r"sha256 of .* is [0-9a-f]{64}, but its card .* records [0-9a-f]{64}") as error:
        load_run(tmp_path)

    assert "Nothing was loaded" in str(error.value)


def test_sha256_mismatch_other_weights(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)
    tensors = {key: value.contiguous() for key, value in network.state_dict().items()}
    tensors["threshold"] = torch.zeros_like(tensors["threshold"])
    save_file(tensors, str(tmp_path / WEIGHTS_FILE))

    with pytest.raises(ValueError, match="the file is corrupt or was replaced"):
        load_run(tmp_path)


def test_card_unregistered_network(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)
    _edit_card(card_path, network="os.system")

    with pytest.raises(ValueError, match="unknown network 'os.system'"):
        load_run(tmp_path)


@pytest.mark.parametrize("weights_file", ["../x.safetensors", "/etc/passwd", "sub/model.safetensors", ".", ".."])
def test_card_weights_file_path(tmp_path, network, small_problem, weights_file):
    card_path = _export(tmp_path, network, small_problem)
    _edit_card(card_path, weights_file=weights_file)

    with pytest.raises(ValueError, match="must be a plain file name"):
        load_run(tmp_path)


def test_card_extra_weights_rejected(tmp_path, network, small_problem):
    tensors = {key: value.contiguous() for key, value in network.state_dict().items()}
    tensors["unexpected"] = torch.zeros(2)
    card_path = _export(tmp_path, network, small_problem)
    save_file(tensors, str(tmp_path / WEIGHTS_FILE))
    _edit_card(card_path, sha256=sha256_file(tmp_path / WEIGHTS_FILE))

    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_run(tmp_path)


def test_refresh_metrics_rewrites_card(zoo_checkpoints, network, small_problem):
    _export(zoo_checkpoints, network, small_problem, stem="alista.small")
    weights_sha = sha256_file(zoo_checkpoints / "alista.small.safetensors")

    card = refresh_test_metrics("alista.small")

    y, x = small_problem.fixed_set("test")
    with torch.no_grad():
        last = network.double()(y)[-1]
    stored = json.loads((zoo_checkpoints / "alista.small.json").read_text())
    assert stored == card
    assert stored["test_metrics"]["dtype"] == "float64"
    assert stored["test_metrics"]["per_layer"]["nmse_db"][-1] == pytest.approx(nmse_db(last, x).item(), abs=1e-9)
    assert stored["sha256"] == weights_sha
    assert load_pretrained("alista.small").card == stored
