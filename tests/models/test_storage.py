"""Storage codecs of the weights files: error bounds of the integer codecs, int4 packing, sizes, and the checks of decode."""

from __future__ import annotations

import pytest
import torch

from models.hub.storage import CODECS, decode, decode_state, encode, encode_state, group_size, round_through
from unrolled.layers.alista import alista_weight


@pytest.fixture
def weights() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 30, 100, generator=generator) * torch.logspace(-3, 0, 100)


@pytest.mark.parametrize(("columns", "expected"), [(500, 50), (512, 64), (1024, 64), (250, 50), (100, 50), (64, 64), (7, 7), (131, 131)])
def test_group_size(columns, expected):
    assert group_size((3, columns)) == expected


@pytest.mark.parametrize(("codec", "q_max"), [("int8", 127), ("int4", 7)])
def test_integer_codec_error_bound(weights, codec, q_max):
    """Every entry moves by at most half its group's scale max|w| / q_max, and the largest entry of a group is kept."""
    rounded = round_through(weights, codec)

    groups = weights.reshape(-1, group_size(weights.shape))
    scale = groups.abs().amax(dim=1, keepdim=True) / q_max
    error = (rounded.reshape(groups.shape) - groups).abs()
    assert torch.all(error <= scale / 2 * (1 + 1e-6))
    peak = groups.abs().argmax(dim=1, keepdim=True)
    assert torch.allclose(rounded.reshape(groups.shape).gather(1, peak), groups.gather(1, peak), rtol=1e-6, atol=0)
    assert error.max() > 0


def test_float_codecs(weights):
    assert torch.equal(round_through(weights, "float32"), weights)
    assert torch.equal(round_through(weights, "float16"), weights.half().float())


@pytest.mark.parametrize(("codec", "bytes_per_entry"), [("int4", 0.5), ("int8", 1.0), ("float16", 2.0), ("float32", 4.0)])
def test_encoded_size(weights, codec, bytes_per_entry):
    entries, record = encode("W", weights, codec)

    stored = sum(entry.numel() * entry.element_size() for entry in entries.values())
    scales = 4 * weights.numel() // record.get("group_size", weights.numel()) if codec.startswith("int") else 0
    assert stored == bytes_per_entry * weights.numel() + scales


def test_int4_odd_number_of_entries():
    """15 entries take 8 bytes; groups whose largest magnitude is 7 have scale 1, so integers come back exactly."""
    values = torch.tensor([[-7.0, -3.0, 0.0, 1.0, 7.0], [1.0, -1.0, 7.0, 0.0, -2.0], [7.0, 5.0, 4.0, 3.0, 2.0]])

    entries, record = encode("W", values, "int4")

    assert entries["W.int4"].numel() == 8
    assert record == {"codec": "int4", "shape": [3, 5], "group_size": 5}
    assert torch.equal(decode("W", entries, record, "test"), values)


def test_zero_group_stays_zero():
    values = torch.zeros(2, 64)
    values[1] = torch.linspace(-1, 1, 64)

    for codec in ("int4", "int8"):
        rounded = round_through(values, codec)
        assert torch.equal(rounded[0], values[0])
        assert torch.isfinite(rounded).all()


def test_state_round_trip(weights):
    state = {"W": weights, "threshold": torch.tensor([0.1, 0.2])}

    entries, records = encode_state(state, {"W": "int8"})
    decoded = decode_state(entries, records, "test")

    assert set(entries) == {"W.int8", "W.scale", "threshold"}
    assert set(records) == {"W"}
    assert set(decoded) == {"W", "threshold"}
    assert torch.equal(decoded["W"], round_through(weights, "int8"))
    assert torch.equal(decoded["threshold"], state["threshold"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda entries, record: record.update(codec="int2"), r"codec 'int2'; expected one of int4, int8, float16, float32"),
        (lambda entries, record: record.update(shape=[4, 30, 50]), r"needs 3000 bytes of int4, found 6000"),
        (lambda entries, record: record.update(group_size=7), r"group size 7 of tensor 'W' does not divide"),
        (lambda entries, record: entries.pop("W.scale"), r"no entry 'W.scale'"),
        (lambda entries, record: entries.update({"W.scale": entries["W.scale"].double()}), r"'W.scale' .* is torch.float64, expected torch.float32"),
        (lambda entries, record: entries["W.int4"].__setitem__(0, 0), r"integers outside ±7"),
    ],
)
def test_decode_rejects_mismatched_record(weights, edit, message):
    entries, record = encode("W", weights, "int4")
    edit(entries, record)

    with pytest.raises(ValueError, match=message):
        decode("W", entries, record, "card.json")


def test_codecs_smallest_first(weights):
    sizes = [sum(entry.numel() * entry.element_size() for entry in encode("W", weights, codec)[0].values()) for codec in CODECS]

    assert sizes == sorted(sizes)


@pytest.fixture
def operator() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    A = torch.randn(20, 40, generator=generator)
    return A / A.norm(dim=0)


@pytest.fixture
def near_basis(operator) -> torch.Tensor:
    """Three slices 0.7 A - 0.2 W_alista, 0.5 A + 0.1 W_alista and -0.3 W_alista, plus noise of size 1e-3."""
    generator = torch.Generator().manual_seed(2)
    alista = alista_weight(operator)
    slices = [0.7 * operator - 0.2 * alista, 0.5 * operator + 0.1 * alista, -0.3 * alista]
    return torch.stack(slices) + 1e-3 * torch.randn(3, 20, 40, generator=generator)


def test_operator_basis_codes_residual(operator, near_basis):
    entries, record = encode("W", near_basis, "int4", operator)
    decoded = decode("W", entries, record, "test", operator)

    assert record["basis"] == ["A", "alista_weight"]
    assert torch.allclose(entries["W.basis"], torch.tensor([[0.7, -0.2], [0.5, 0.1], [0.0, -0.3]]), atol=1e-3)
    plain_error = (round_through(near_basis, "int4") - near_basis).abs().max()
    basis_error = (decoded - near_basis).abs().max()
    # The residual is noise of size 1e-3, so its int4 steps are about 1e-3 * 3 / 7.
    assert basis_error < 1e-3
    assert basis_error < plain_error / 50
    assert torch.equal(round_through(near_basis, "int4", operator), decoded)


def test_operator_basis_only_for_its_shape(operator, near_basis):
    assert "basis" not in encode("W", near_basis[:, :, :20], "int8", operator)[1]
    assert "basis" not in encode("W", near_basis, "int8", operator.T[:, :20])[1]
    assert "basis" not in encode("W", near_basis, "float16", operator)[1]


@pytest.mark.parametrize(
    ("edit", "operator_passed", "message"),
    [
        (lambda entries, record: None, False, r"is coded on the operator basis, but no operator was passed"),
        (lambda entries, record: record.update(basis=["A"]), True, r"names the basis \['A'\]; expected \['A', 'alista_weight'\]"),
        (lambda entries, record: entries.update({"W.basis": entries["W.basis"][:2]}), True, r"'W.basis' has shape \(2, 2\), expected \(3, 2\)"),
    ],
)
def test_operator_basis_rejects_mismatch(operator, near_basis, edit, operator_passed, message):
    entries, record = encode("W", near_basis, "int8", operator)
    edit(entries, record)

    with pytest.raises(ValueError, match=message):
        decode("W", entries, record, "card.json", operator if operator_passed else None)


def test_decode_rejects_unused_basis(operator, near_basis):
    """A record stripped of its basis would load the residual as the matrix, so the unused entry is an error."""
    entries, record = encode("W", near_basis, "int4", operator)
    del record["basis"]

    with pytest.raises(ValueError, match=r"contains 'W.basis', which the storage record .* does not use"):
        decode("W", entries, record, "card.json", operator)


def test_decode_rejects_bad_scales(weights):
    entries, record = encode("W", weights, "int8")
    entries["W.scale"][3] = float("nan")

    with pytest.raises(ValueError, match=r"'W.scale' contains negative or non-finite scales"):
        decode("W", entries, record, "card.json")


def test_operator_basis_shape_edited(operator, near_basis):
    entries, record = encode("W", near_basis, "int8", operator)
    record["shape"] = [3, 40, 20]

    with pytest.raises(ValueError, match=r"only a tensor of shape \[\.\.\., 20, 40\] can be coded on\. The card"):
        decode("W", entries, record, "card.json", operator)
