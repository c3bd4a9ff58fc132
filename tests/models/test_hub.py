"""Export, list, load and verify checkpoints: round trips, sha256 verification, card validation, atomic
writes, the problem check of the loaders, the ``python -m models.hub`` command line and the timm entry points."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models import NETWORKS, build_network, export_model, list_pretrained, load_pretrained, load_run
from models.hub import (
    CARD_FILE,
    CARD_FORMAT,
    CHECKPOINTS_ENV,
    WEIGHTS_FILE,
    checkpoints_dir,
    choose_storage,
    measure_test_metrics,
    refresh_test_metrics,
    repack_checkpoint,
    sha256_file,
    verify_model,
)
from models.hub.export import round_large_tensors
from models.hub.verify import describe_problem
from models.hub.loading import operator_probes
from models.hub.__main__ import main as hub_main
from models.timm_entrypoints import entrypoint_name
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


def test_export_leaves_operator_out(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)

    with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as weights:
        stored = set(weights.keys())
    card = json.loads(card_path.read_text())

    assert "A" not in stored
    assert stored == set(network.state_dict()) - {"A"}
    assert card["operator"]["dtype"] == "float32"
    assert card["operator"]["probes"] == operator_probes(network.A)
    assert card["weights_storage"] == {}


def test_probes_detect_other_operator(small_problem):
    A = small_problem.A
    other = SparseCoding(m=50, n=100, n_val=64, n_test=64, operator_seed=7).A

    probes, rounded, changed = (torch.tensor(operator_probes(M)) for M in (A, A.float(), other))

    assert torch.allclose(rounded, probes, rtol=1e-6, atol=0)
    assert not torch.allclose(changed, probes, rtol=1e-2, atol=0)


def test_card_operator_probe_mismatch(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)
    card = json.loads(card_path.read_text())
    card["operator"]["probes"][2] *= 1.001
    card_path.write_text(json.dumps(card))

    with pytest.raises(ValueError, match=r"probes were edited, or this torch build .* draws another A from the same seeds"):
        load_run(tmp_path)


def test_card_operator_dtype_unknown(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)
    card = json.loads(card_path.read_text())
    card["operator"]["dtype"] = "load"
    card_path.write_text(json.dumps(card))

    with pytest.raises(ValueError, match=r"operator dtype 'load'; expected one of float32, float64"):
        load_run(tmp_path)


def test_card_without_operator_record(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)
    _edit_card(card_path, operator=None)

    with pytest.raises(ValueError, match="is missing the operator record"):
        load_run(tmp_path)


def test_export_rejects_foreign_operator(tmp_path, small_problem):
    other = SparseCoding(m=50, n=100, n_val=64, n_test=64, operator_seed=7)
    network = build_network("alista", other.A.float(), N_LAYERS, **NETWORK_KWARGS)

    with pytest.raises(ValueError, match="is not the operator of problem"):
        _export(tmp_path, network, small_problem)


def test_format1_card_loads(tmp_path, network, small_problem, measurements):
    card_path = _export(tmp_path, network, small_problem)
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(tmp_path / WEIGHTS_FILE))
    card = json.loads(card_path.read_text())
    del card["operator"]
    card.update(format=1, sha256=sha256_file(tmp_path / WEIGHTS_FILE))
    card_path.write_text(json.dumps(card))

    loaded = load_run(tmp_path)

    assert torch.equal(loaded.network(measurements), network(measurements))


def test_repack_format1_checkpoint(zoo_checkpoints, network, small_problem, measurements):
    card_path = _export(zoo_checkpoints, network, small_problem, stem="alista.old")
    weights_path = zoo_checkpoints / "alista.old.safetensors"
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(weights_path))
    card = json.loads(card_path.read_text())
    del card["operator"]
    card.update(format=1, sha256=sha256_file(weights_path), command="train.py model=alista")
    card_path.write_text(json.dumps(card))

    repacked = repack_checkpoint("alista.old")

    with safe_open(str(weights_path), "pt") as weights:
        assert "A" not in weights.keys()
    assert repacked["format"] == CARD_FORMAT
    assert repacked["command"] == "train.py model=alista"
    assert repacked["sha256"] == sha256_file(weights_path)
    assert repacked["test_metrics"]["per_layer"] == measure_test_metrics(network, small_problem)["per_layer"]
    assert torch.equal(load_pretrained("alista.old").network(measurements), network(measurements))


@pytest.fixture
def perturbed_lista_cp(small_problem):
    """LISTA-CP whose W (3 x 50 x 100 entries) is large enough for lossy storage.

    Its columns are scaled over three decades, so int4 rounds many entries of a group to zero and
    shifts the NMSE far more than int8.
    """
    torch.manual_seed(0)
    network = build_network("lista_cp", small_problem.A.float(), N_LAYERS, reg=0.2)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1 + 0.2 * torch.rand_like(parameter))
        network.W.mul_(torch.logspace(-3, 0, network.W.shape[-1]))
    return network


def _last_layer_shift(network, rounded, problem) -> float:
    return measure_test_metrics(rounded, problem)["per_layer"]["nmse_db"][-1] - measure_test_metrics(network, problem)["per_layer"]["nmse_db"][-1]


@pytest.mark.parametrize(("tolerance_db", "expected_codec"), [(100.0, "int4"), (-1.0, "float32")])
def test_storage_codec_round_trip(tmp_path, small_problem, measurements, perturbed_lista_cp, tolerance_db, expected_codec):
    network = perturbed_lista_cp

    storage = choose_storage(network, small_problem, tolerance_db=tolerance_db)
    export_model(tmp_path, "lista_cp", network, {"reg": 0.2}, small_problem, {}, codec=storage.codec)
    loaded = load_run(tmp_path)

    assert storage.codec == expected_codec
    tried = ["int4"] if expected_codec == "int4" else ["int4", "int8", "float16"]
    assert list(storage.shifts_db) == tried
    for codec in tried:
        assert storage.shifts_db[codec] == pytest.approx(
            _last_layer_shift(network, round_large_tensors(network, codec), small_problem), abs=1e-12
        )
    assert storage.rounding_shift_db == (storage.shifts_db["int4"] if expected_codec == "int4" else 0.0)
    with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as weights:
        dtypes = {key: weights.get_tensor(key).dtype for key in weights.keys()}
    card = json.loads((tmp_path / CARD_FILE).read_text())
    assert card["weights_storage"]["W"]["codec"] == expected_codec
    expected_entries = (
        {"W.int4": torch.uint8, "W.scale": torch.float32, "W.basis": torch.float32}
        if expected_codec == "int4"
        else {"W": torch.float32}
    )
    assert {key: dtype for key, dtype in dtypes.items() if key.startswith("W")} == expected_entries
    assert all(dtype == torch.float32 for key, dtype in dtypes.items() if not key.startswith("W"))
    assert torch.equal(loaded.network(measurements), storage.network(measurements))
    assert measure_test_metrics(loaded.network, small_problem) == storage.test_metrics


def test_storage_smallest_codec_within_tolerance(small_problem, perturbed_lista_cp):
    """With the tolerance between the int8 and int4 shifts, int8 is kept. A prior shift counts against the tolerance."""
    shifts = {
        codec: _last_layer_shift(perturbed_lista_cp, round_large_tensors(perturbed_lista_cp, codec), small_problem)
        for codec in ("int4", "int8")
    }
    assert abs(shifts["int8"]) < abs(shifts["int4"])
    tolerance = (abs(shifts["int8"]) + abs(shifts["int4"])) / 2

    storage = choose_storage(perturbed_lista_cp, small_problem, tolerance_db=tolerance)
    prior = choose_storage(perturbed_lista_cp, small_problem, tolerance_db=tolerance, prior_shift_db=10 * tolerance + 1)

    assert storage.codec == "int8"
    assert storage.rounding_shift_db == pytest.approx(shifts["int8"], abs=1e-12)
    assert prior.codec == "float32"
    assert prior.rounding_shift_db == 10 * tolerance + 1
    assert prior.shifts_db["int8"] == pytest.approx(10 * tolerance + 1 + shifts["int8"], abs=1e-12)


def test_card_unknown_codec_rejected(tmp_path, small_problem, perturbed_lista_cp):
    export_model(tmp_path, "lista_cp", perturbed_lista_cp, {"reg": 0.2}, small_problem, {}, codec="int8")
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["weights_storage"]["W"]["codec"] = "pickle"
    (tmp_path / CARD_FILE).write_text(json.dumps(card))

    with pytest.raises(ValueError, match=r"names the storage codec 'pickle'; expected one of int4, int8, float16, float32"):
        load_run(tmp_path)


@pytest.mark.parametrize("card_format", [CARD_FORMAT + 1, 0, True, "3"])
def test_card_of_unknown_format(tmp_path, network, small_problem, card_format):
    card_path = _export(tmp_path, network, small_problem)
    _edit_card(card_path, format=card_format)

    with pytest.raises(ValueError, match=rf"has format {card_format!r}; this version of unrolled-zoo reads formats 1 to {CARD_FORMAT}"):
        load_run(tmp_path)


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

    with pytest.raises(ValueError, match=r"(?s)do not fit the network .alista.*Unexpected key.*Restore the card and its weights file"):
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


def test_card_unregistered_network_checked_before_weights(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)
    # Garbage weights whose sha256 the card records: reading them would raise a safetensors parse
    # error, so the unknown-network error proves that the loader stopped before the weights.
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    _edit_card(card_path, network="lista_cpp", sha256=sha256_file(tmp_path / WEIGHTS_FILE))

    with pytest.raises(ValueError, match="unknown network 'lista_cpp'") as error:
        load_run(tmp_path)

    message = str(error.value)
    assert f"Available: {', '.join(sorted(NETWORKS))}." in message
    assert "Close matches: lista_cp" in message
    assert "Nothing was loaded" in message
    assert str(card_path) in message


def test_card_unregistered_network_checked_before_sha256(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    _edit_card(card_path, network="not_registered")

    with pytest.raises(ValueError, match="unknown network 'not_registered'"):
        load_run(tmp_path)


def test_card_missing_fields(tmp_path, network, small_problem):
    card_path = _export(tmp_path, network, small_problem)
    card = json.loads(card_path.read_text())
    del card["n_layers"], card["sha256"]
    card_path.write_text(json.dumps(card))

    with pytest.raises(ValueError, match=r"model card .* has no n_layers, sha256; expected the fields"):
        load_run(tmp_path)


def test_load_run_problem_shape_mismatch(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)
    other = SparseCoding(m=60, n=100, n_val=64, n_test=64)

    with pytest.raises(ValueError, match="trained for an operator A of shape") as error:
        load_run(tmp_path, problem=other)

    message = str(error.value)
    assert "(50, 100)" in message
    assert "(60, 100)" in message


def test_load_run_problem_spec_dict_shape_mismatch(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)
    spec = SparseCoding(m=50, n=120, n_val=64, n_test=64).spec()

    with pytest.raises(ValueError, match=r"shape \(50, 100\) .* shape \(50, 120\)"):
        load_run(tmp_path, problem=spec)


def test_load_run_problem_other_operator_warns(tmp_path, network, small_problem, caplog):
    _export(tmp_path, network, small_problem)
    other = SparseCoding(m=50, n=100, n_val=64, n_test=64, operator_seed=7)

    with caplog.at_level(logging.WARNING, logger="models.hub"):
        loaded = load_run(tmp_path, problem=other)

    assert "the weights were learned for another operator A of the same shape (50, 100)" in caplog.text
    assert loaded.problem is other
    assert torch.equal(loaded.network.A, network.A)


def test_load_run_own_problem_silent(tmp_path, network, small_problem, caplog):
    _export(tmp_path, network, small_problem)

    with caplog.at_level(logging.INFO, logger="models.hub"):
        loaded = load_run(tmp_path, problem=small_problem.spec())

    assert caplog.records == []
    assert loaded.problem.spec() == small_problem.spec()


def test_load_run_problem_other_noise_logged(tmp_path, network, small_problem, caplog):
    _export(tmp_path, network, small_problem)
    noisy = SparseCoding(m=50, n=100, n_val=64, n_test=64, snr_db=30)

    with caplog.at_level(logging.INFO, logger="models.hub"):
        load_run(tmp_path, problem=noisy)

    assert [record.levelno for record in caplog.records] == [logging.INFO]
    assert "differs from the card's in snr_db" in caplog.text


def test_load_run_problem_wrong_type(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)

    with pytest.raises(TypeError, match="problem must be a unrolled.problems.Problem or its spec dict, got str"):
        load_run(tmp_path, problem="sparse_coding")


def test_loaded_network_wrong_measurement_length(tmp_path, network, small_problem):
    _export(tmp_path, network, small_problem)
    loaded = load_run(tmp_path)

    with pytest.raises(ValueError, match=r"m = A.shape\[0\] = 50, got shape \(2, 49\)"):
        loaded.network(torch.zeros(2, 49))


# The command line ``python -m models.hub``: in-process through its main(), on exported toy models.


def _publish_toy(folder: Path, network, problem, stem: str, n_layers: int = N_LAYERS) -> Path:
    """Export ``network`` as the shipped model ``stem`` with test metrics measured like train.py's."""

    storage = choose_storage(network, problem)
    extra = {"test_metrics": storage.test_metrics, "storage": storage.card_record()}
    return export_model(folder, "alista", network, NETWORK_KWARGS, problem, extra, stem=stem, codec=storage.codec)


def test_cli_list_toy_models(zoo_checkpoints, network, small_problem, capsys, caplog):
    _publish_toy(zoo_checkpoints, network, small_problem, "alista.small")
    (zoo_checkpoints / "lista.broken.json").write_text("{not json")

    status = hub_main(["list"])

    output = capsys.readouterr()
    assert status == 0
    rows = {line.split()[0]: line.split() for line in output.out.splitlines()[2:]}
    assert sorted(rows) == ["alista.small", "lista.broken"]
    assert rows["alista.small"][:6] == ["alista.small", "alista", "small", "sparse_coding", "50x100", "noiseless"]
    assert rows["alista.small"][6] == str(N_LAYERS)
    card = json.loads((zoo_checkpoints / "alista.small.json").read_text())
    assert rows["alista.small"][7] == f"{card['test_metrics']['per_layer']['nmse_db'][-1]:.2f}"
    assert rows["alista.small"][8] == f"{card['test_metrics']['per_layer']['nmse_db_per_sample'][-1]:.2f}"
    assert rows["alista.small"][9] == card["storage"]["codec"] == "float32"
    assert rows["alista.small"][10] == f"{(zoo_checkpoints / 'alista.small.safetensors').stat().st_size / 1e6:.2f}"
    assert "cannot read the model card" in caplog.text


def test_describe_problem_condition_number():
    spec = SparseCoding(m=50, n=100, n_val=64, n_test=64, condition_number=30).spec()

    assert describe_problem(spec) == "sparse_coding 50x100 noiseless kappa=30"


def test_cli_list_empty_folder(zoo_checkpoints, capsys):
    assert hub_main(["list"]) == 0
    assert capsys.readouterr().out == f"no checkpoints in {zoo_checkpoints}\n"


def test_cli_verify_toy_models(zoo_checkpoints, network, small_problem, capsys):
    _publish_toy(zoo_checkpoints, network, small_problem, "alista.small")

    status = hub_main(["verify", "alista.small"])

    output = capsys.readouterr().out
    assert status == 0
    assert output.splitlines()[1].split()[-1] == "OK"
    assert output.splitlines()[-1] == "OK: all 1 models match their cards within 0.1 dB on every layer"


def test_cli_verify_unknown_name(zoo_checkpoints, network, small_problem, capsys):
    _publish_toy(zoo_checkpoints, network, small_problem, "alista.small")

    with pytest.raises(SystemExit) as exit_info:
        hub_main(["verify", "alista.smal"])

    assert exit_info.value.code == 2
    assert "unknown models alista.smal" in capsys.readouterr().err


def test_cli_verify_negative_tolerance(zoo_checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_info:
        hub_main(["verify", "--tolerance-db", "-0.1"])

    assert exit_info.value.code == 2
    assert "--tolerance-db must be a finite number >= 0, got -0.1" in capsys.readouterr().err


def test_cli_verify_empty_folder(zoo_checkpoints, caplog):
    assert hub_main(["verify"]) == 1
    assert f"no checkpoints to verify in {zoo_checkpoints}" in caplog.text


def test_verify_layer_count_mismatch(zoo_checkpoints, network, small_problem):
    card_path = _publish_toy(zoo_checkpoints, network, small_problem, "alista.small")
    card = json.loads(card_path.read_text())
    card["test_metrics"]["per_layer"]["nmse_db_per_sample"].pop()
    card_path.write_text(json.dumps(card))

    result = verify_model("alista.small")

    assert not result.ok
    assert (
        result.error
        == f"card test_metrics.per_layer: nmse_db_per_sample lists {N_LAYERS - 1} layers, but the network has {N_LAYERS}"
    )


def test_verify_corrupt_weights(zoo_checkpoints, network, small_problem):
    _publish_toy(zoo_checkpoints, network, small_problem, "alista.small")
    (zoo_checkpoints / "alista.small.safetensors").write_bytes(b"replaced")

    result = verify_model("alista.small")

    assert not result.ok
    assert result.error.startswith("loading failed: sha256 of ")


def test_verify_nan_in_card_fails(zoo_checkpoints, network, small_problem):
    card_path = _publish_toy(zoo_checkpoints, network, small_problem, "alista.small")
    card = json.loads(card_path.read_text())
    card["test_metrics"]["per_layer"]["nmse_db"][1] = float("nan")
    card_path.write_text(json.dumps(card))

    result = verify_model("alista.small")

    assert not result.ok
    assert result.max_deviation_at == "nmse_db, layer 2"


# The command line as a subprocess, on the repository's checkpoints/ (read only; tampered cards are copies).

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "checkpoints"
SMALL_SHIPPED = sorted(path.stem for path in SHIPPED.glob("alista.*.json"))


def _run_hub(*arguments: str, checkpoints: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, CHECKPOINTS_ENV: str(checkpoints), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "models.hub", *arguments], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_list_shipped():
    completed = _run_hub("list", checkpoints=SHIPPED)

    assert completed.returncode == 0, completed.stderr
    assert "RuntimeWarning" not in completed.stderr
    sparse_table, _, imaging_table = completed.stdout.partition("\n\n")
    names = [line.split()[0] for line in sparse_table.splitlines()[2:]]
    assert names == sorted(path.stem for path in SHIPPED.glob("*.json"))
    imaging_names = [line.split()[0] for line in imaging_table.splitlines()[2:]]
    assert imaging_names == sorted(path.stem for path in (SHIPPED / "imaging").glob("*.json"))


def test_cli_verify_shipped_small():
    assert SMALL_SHIPPED, f"no alista.* checkpoints in {SHIPPED}"

    completed = _run_hub("verify", *SMALL_SHIPPED, checkpoints=SHIPPED)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = completed.stdout.splitlines()[1 : 1 + len(SMALL_SHIPPED)]
    assert [row.split()[0] for row in rows] == SMALL_SHIPPED
    assert [row.split()[-1] for row in rows] == ["OK"] * len(SMALL_SHIPPED)
    assert "RuntimeWarning" not in completed.stderr


def test_cli_verify_tampered_card(tmp_path):
    source = "alista.sc250x500_noiseless"
    shutil.copy(SHIPPED / f"{source}.safetensors", tmp_path)
    shutil.copy(SHIPPED / f"{source}.json", tmp_path)
    card = json.loads((SHIPPED / f"{source}.json").read_text())
    # Two tampered copies that share the original weights file: one at the last layer in the
    # aggregate convention, one at a middle layer in the per-sample convention.
    for stem, key, layer in (("alista.tampered_last", "nmse_db", -1), ("alista.tampered_middle", "nmse_db_per_sample", 7)):
        tampered = json.loads(json.dumps(card))
        tampered["test_metrics"]["per_layer"][key][layer] += 0.5
        (tmp_path / f"{stem}.json").write_text(json.dumps(tampered))

    completed = _run_hub("verify", checkpoints=tmp_path)

    assert completed.returncode == 1
    rows = {line.split()[0]: line for line in completed.stdout.splitlines()[1:4]}
    assert rows[source].split()[-1] == "OK"
    assert rows["alista.tampered_last"].split()[-1] == "FAILED"
    assert rows["alista.tampered_middle"].split()[-1] == "FAILED"
    assert "nmse_db, layer 16" in rows["alista.tampered_last"]
    assert "nmse_db_per_sample, layer 8" in rows["alista.tampered_middle"]
    assert "verify FAILED for 2 of 3 models: alista.tampered_last, alista.tampered_middle." in completed.stderr


# timm entry points ``<network>_t16``, generated from the registry.


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_timm_entrypoint_registered(name):
    entrypoint = timm.models.model_entrypoint(entrypoint_name(name))

    assert entrypoint_name(name) in timm.list_models("*_t16")
    assert entrypoint.__name__ == f"{name}_t16"
    assert entrypoint.__module__ == "models.timm_entrypoints"
    assert getattr(sys.modules["models.timm_entrypoints"], f"{name}_t16") is entrypoint


def test_timm_old_names_removed():
    assert not set(NETWORKS) & set(timm.list_models())


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_timm_create_default(name):
    network = timm.create_model(entrypoint_name(name))

    assert isinstance(network, NETWORKS[name])
    assert network.n_layers == 16
    assert torch.equal(network.A, SparseCoding().A.to(torch.float32))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_timm_create_with_operator(small_problem, name):
    A = small_problem.A.to(torch.float32)
    y, _ = small_problem.sample(2, torch.Generator().manual_seed(4))
    y = y.to(torch.float32)

    network = timm.create_model(entrypoint_name(name), A=A, n_layers=2)

    assert network.n_layers == 2
    assert network(y).shape == (2, 2, small_problem.n)
    assert torch.equal(network(y), build_network(name, A, 2)(y))


def test_timm_pretrained_matches_hub(zoo_checkpoints, small_problem, measurements):
    torch.manual_seed(5)
    network = build_network("alista", small_problem.A.to(torch.float32), 16, reg=0.2)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1 + 0.1 * torch.rand_like(parameter))
    export_model(zoo_checkpoints, "alista", network, {"reg": 0.2}, small_problem, {}, stem="alista.tiny16")

    from_timm = timm.create_model("alista_t16.tiny16", pretrained=True)
    from_hub = load_pretrained("alista.tiny16").network

    assert type(from_timm) is NETWORKS["alista"]
    assert from_timm.state_dict().keys() == from_hub.state_dict().keys()
    for key, value in from_hub.state_dict().items():
        assert torch.equal(from_timm.state_dict()[key], value), key
    assert torch.equal(from_timm(measurements), network(measurements))


def test_timm_pretrained_needs_16_layers(zoo_checkpoints, network, small_problem):
    _export(zoo_checkpoints, network, small_problem, stem="alista.tiny")

    with pytest.raises(ValueError, match=r"alista\.tiny has 3 layers, but the entry point alista_t16 loads 16-layer"):
        timm.create_model("alista_t16.tiny", pretrained=True)


def test_timm_pretrained_without_tag(zoo_checkpoints, network, small_problem):
    _export(zoo_checkpoints, network, small_problem, stem="alista.tiny")

    with pytest.raises(
        ValueError, match=r"needs a tag naming the checkpoint, e\.g\. 'alista_t16\.sc250x500_noiseless'; tags of alista: tiny"
    ):
        timm.create_model("alista_t16", pretrained=True)


def test_timm_pretrained_unknown_tag():
    with pytest.raises(ValueError, match="unknown pretrained model 'lista_cp.missing'"):
        timm.create_model("lista_cp_t16.missing", pretrained=True)


def test_timm_pretrained_rejects_overrides(small_problem):
    with pytest.raises(
        ValueError, match="takes the operator, depth and network arguments from the checkpoint's card, got A, n_layers, reg"
    ):
        timm.create_model("alista_t16.sc250x500_noiseless", pretrained=True, A=small_problem.A, n_layers=4, reg=0.1)


def test_card_without_storage_record(tmp_path, small_problem, perturbed_lista_cp):
    export_model(tmp_path, "lista_cp", perturbed_lista_cp, {"reg": 0.2}, small_problem, {}, codec="int4")
    _edit_card(tmp_path / CARD_FILE, weights_storage={})

    with pytest.raises(ValueError, match=r"(?s)do not fit the network .lista_cp. .*Missing key.*Restore the card and its weights file"):
        load_run(tmp_path)
