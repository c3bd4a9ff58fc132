"""Codecs for the large learned tensors of a weights file: float32, float16, and 8- or 4-bit integers with group scales.

The integer codecs quantize symmetrically with one scale per group of ``g`` consecutive entries
along the last axis (group-wise absmax quantization, as in Dettmers et al., "LLM.int8()", NeurIPS
2022, and Frantar et al., "GPTQ", ICLR 2023). With ``b`` bits, ``q_max = 2^(b-1) - 1``, and a group
``w`` of entries,

    s = max_i |w_i| / q_max,    q_i = round(w_i / s) ∈ [-q_max, q_max],    ŵ_i = q_i · s,

so every entry moves by at most ``s / 2``. int4 packs two entries per byte. Per entry, with
float32 scales, int8 takes ``1 + 4/g`` bytes and int4 ``1/2 + 4/g`` bytes, against 4 for float32.

A learned matrix W_k of the operator's shape is close to a combination of A and the analytic
ALISTA weight (:func:`unrolled.layers.alista.alista_weight`), which Liu et al. ("ALISTA", ICLR
2019) propose in place of the learned weights of LISTA-CP. The integer codecs therefore quantize
the residual

    R_k = W_k - (c_k1 A + c_k2 W_alista),    (c_k1, c_k2) the least-squares fit, stored in float32,

whose largest entries are smaller than those of W_k, so the scales and the rounding errors are
too. The loader rebuilds the basis from the regenerated operator.

A weights file holds, for a tensor ``key`` stored with an integer codec, the entries
``key.int8`` or ``key.int4`` (integers), ``key.scale`` (float32, one per group) and, on the basis,
``key.basis`` (the coefficients). The card lists each such tensor with its codec, shape, group
size and basis (:func:`encode` returns that record), and
:func:`decode` rebuilds the float32 tensor from the entries and the record. Decoding checks the
record against the entries, so an edited card fails with an error instead of loading wrong weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unrolled.layers.alista import alista_weight

# Codecs from the smallest file to the largest, the order in which models.hub.export.choose_storage tries them.
CODECS = ("int4", "int8", "float16", "float32")
INTEGER_BITS = {"int4": 4, "int8": 8}
# Ending of the errors of decode: what the user can do about a record that does not fit.
RESTORE_HINT = "The card or its weights file was edited or is damaged: restore both, or re-export the model."
FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Names of the basis matrices of a tensor of the operator's shape, in the order of its coefficients.
BASIS = ("A", "alista_weight")
# A group is the largest divisor of the last axis from MIN_GROUP_SIZE to MAX_GROUP_SIZE (50 for 500
# columns, 64 for 512), or the whole last axis when no number in that range divides it (131 or 134).
MIN_GROUP_SIZE, MAX_GROUP_SIZE = 16, 64


def group_size(shape: tuple[int, ...] | torch.Size) -> int:
    """Return the group size for a tensor of ``shape`` (see :data:`MAX_GROUP_SIZE`)."""
    columns = shape[-1] if len(shape) else 1
    divisors = [size for size in range(MIN_GROUP_SIZE, MAX_GROUP_SIZE + 1) if columns % size == 0]
    return max(divisors) if divisors and columns > MAX_GROUP_SIZE else max(columns, 1)


def _q_max(codec: str) -> int:
    return 2 ** (INTEGER_BITS[codec] - 1) - 1


def _check_codec(codec: Any, where: str, hint: str = "") -> None:
    if codec not in CODECS:
        raise ValueError(f"{where} names the storage codec {codec!r}; expected one of {', '.join(CODECS)}.{hint}")


def operator_basis(operator: Tensor | None, shape: tuple[int, ...] | torch.Size) -> Tensor | None:
    """Return the basis (A, W_alista) in float64, stacked as (2, m, n), if a tensor of ``shape`` is coded on it, else None.

    A tensor is coded on the basis when its last two axes have the operator's shape and the
    operator is wide (m ≤ n), which the ALISTA weight needs.
    """
    if operator is None or len(shape) < 2 or tuple(shape[-2:]) != tuple(operator.shape):
        return None
    A = operator.detach().to("cpu", torch.float64)
    if A.shape[0] > A.shape[1]:
        return None
    return torch.stack([A, alista_weight(A)])


def encode(key: str, tensor: Tensor, codec: str, operator: Tensor | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Encode ``tensor`` with ``codec``: return the entries of the weights file and the card's record of them.

    A float codec gives the single entry ``key`` and the record ``{"codec": codec}``. An integer
    codec gives ``key.int8`` or ``key.int4`` with ``key.scale``, and its record adds ``shape`` and
    ``group_size``. With ``operator`` given and a tensor of its shape (see :func:`operator_basis`),
    the integers code the residual from the basis, the coefficients go to ``key.basis`` and the
    record names the basis. Raises ``ValueError`` for a codec not in :data:`CODECS`.
    """
    _check_codec(codec, "encode")
    tensor = tensor.detach().cpu()
    if codec in FLOAT_DTYPES:
        return {key: tensor.to(FLOAT_DTYPES[codec]).contiguous()}, {"codec": codec}
    values = tensor.to(torch.float64)
    entries, record = {}, {"codec": codec, "shape": list(tensor.shape), "group_size": group_size(tensor.shape)}
    basis = operator_basis(operator, tensor.shape)
    if basis is not None:
        flat_basis = basis.reshape(2, -1)
        slices = values.reshape(-1, flat_basis.shape[1])
        # gelsy (the CPU default) also solves a rank-deficient fit, where A and W_alista are parallel.
        coefficients = torch.linalg.lstsq(flat_basis.T, slices.T).solution.T.to(torch.float32).contiguous()
        values = values - _combine(coefficients, flat_basis, tensor.shape)
        entries[f"{key}.basis"] = coefficients
        record["basis"] = list(BASIS)
    groups = values.reshape(-1, record["group_size"])
    q_max = _q_max(codec)
    scale = (groups.abs().amax(dim=1, keepdim=True) / q_max).to(torch.float32)
    # An all-zero group has scale 0, so it is divided by 1 instead, which keeps its integers at 0.
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float64)
    q = torch.round(groups / divisor).clamp_(-q_max, q_max).to(torch.int8)
    entries[f"{key}.scale"] = scale.contiguous()
    entries[f"{key}.{codec}"] = q.contiguous() if codec == "int8" else _pack_nibbles(q.flatten())
    return entries, record


def decode(key: str, entries: dict[str, Tensor], record: Any, where: str, operator: Tensor | None = None) -> Tensor:
    """Rebuild tensor ``key`` in float32 from the weights-file ``entries`` and its card ``record`` (see :func:`encode`).

    ``operator`` is needed for a record coded on the operator basis. Raises ``ValueError``, naming
    ``where`` (the card), when the record is malformed or does not fit the entries: an unknown
    codec or basis, a missing entry or operator, or a shape, group size or dtype that disagrees.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: the storage record of {key!r} must be an object, got {record!r}. {RESTORE_HINT}")
    codec = record.get("codec")
    _check_codec(codec, f"{where}, tensor {key!r},", f" {RESTORE_HINT}")
    _check_entry_names(key, entries, record, where)
    if codec in FLOAT_DTYPES:
        tensor = _entry(entries, key, FLOAT_DTYPES[codec], where)
        return tensor.to(torch.float32)
    shape, size = record.get("shape"), record.get("group_size")
    if not (isinstance(shape, list) and all(_is_count(n) for n in shape) and _is_count(size) and size > 0):
        raise ValueError(f"{where}: tensor {key!r} needs a list of sizes 'shape' and a positive 'group_size', got {record}. {RESTORE_HINT}")
    numel = int(torch.Size(shape).numel())
    if numel % size:
        raise ValueError(f"{where}: group size {size} of tensor {key!r} does not divide its {numel} entries. {RESTORE_HINT}")
    scale = _entry(entries, f"{key}.scale", torch.float32, where)
    if codec == "int8":
        q = _entry(entries, f"{key}.int8", torch.int8, where)
    else:
        packed = _entry(entries, f"{key}.int4", torch.uint8, where)
        if packed.numel() != (numel + 1) // 2:
            raise ValueError(f"{where}: tensor {key!r} of shape {shape} needs {(numel + 1) // 2} bytes of int4, found {packed.numel()}. {RESTORE_HINT}")
        q = _unpack_nibbles(packed, numel)
    if q.numel() != numel or scale.numel() != numel // size:
        raise ValueError(
            f"{where}: tensor {key!r} of shape {shape} in groups of {size} needs {numel} integers and {numel // size} scales, "
            f"found {q.numel()} and {scale.numel()}. {RESTORE_HINT}"
        )
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError(f"{where}: entry '{key}.scale' contains negative or non-finite scales. {RESTORE_HINT}")
    if numel and (q.min().item() < -_q_max(codec) or q.max().item() > _q_max(codec)):
        raise ValueError(f"{where}: tensor {key!r} contains integers outside ±{_q_max(codec)}, which is invalid for {codec}. {RESTORE_HINT}")
    values = (q.reshape(-1, size).to(torch.float64) * scale.reshape(-1, 1).to(torch.float64)).reshape(shape)
    if "basis" in record:
        values = values + _decode_basis(key, entries, record, where, operator)
    return values.to(torch.float32)


def round_through(tensor: Tensor, codec: str, operator: Tensor | None = None) -> Tensor:
    """Return ``tensor`` as it loads after storage with ``codec`` (on the basis of ``operator`` where it applies), in ``tensor``'s dtype."""
    entries, record = encode("t", tensor, codec, operator)
    return decode("t", entries, record, "round_through", operator).to(tensor.dtype)


def encode_state(
    state: dict[str, Tensor], codecs: dict[str, str], operator: Tensor | None = None
) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Encode the tensors of ``state`` named in ``codecs``; return the weights-file entries and the card's records.

    Tensors not named in ``codecs`` are stored as they are. ``operator``: see :func:`encode`.
    """
    entries, records = {}, {}
    for key, tensor in state.items():
        if key in codecs:
            encoded, records[key] = encode(key, tensor, codecs[key], operator)
            entries.update(encoded)
        else:
            entries[key] = tensor.detach().cpu().contiguous()
    return entries, records


def decode_state(entries: dict[str, Tensor], records: Any, where: str, operator: Tensor | None = None) -> dict[str, Tensor]:
    """Return the state dict of a weights file: each tensor in ``records`` decoded, the other entries unchanged.

    ``operator``: see :func:`decode`. Raises ``ValueError`` naming ``where`` when ``records`` is not
    an object or a record does not fit.
    """
    if not isinstance(records, dict):
        raise ValueError(f"{where}: 'weights_storage' must map tensor names to storage records, got {records!r}. {RESTORE_HINT}")
    state = dict(entries)
    for key, record in records.items():
        tensor = decode(key, entries, record, where, operator)
        for name in _coded_names(key):
            state.pop(name, None)
        state[key] = tensor
    return state


def _combine(coefficients: Tensor, flat_basis: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Return the float64 tensor of ``shape`` whose slice k is Σ_j coefficients[k, j] · basis_j."""
    return (coefficients.to(torch.float64) @ flat_basis).reshape(shape)


def _decode_basis(key: str, entries: dict[str, Tensor], record: dict[str, Any], where: str, operator: Tensor | None) -> Tensor:
    if record["basis"] != list(BASIS):
        raise ValueError(f"{where}: tensor {key!r} names the basis {record['basis']!r}; expected {list(BASIS)}. {RESTORE_HINT}")
    if operator is None:
        raise ValueError(
            f"{where}: tensor {key!r} is coded on the operator basis, but no operator was passed to decode it. "
            "Pass the operator A of the card's problem."
        )
    basis = operator_basis(operator, record["shape"])
    if basis is None:
        raise ValueError(
            f"{where}: tensor {key!r} of shape {record['shape']} is coded on the operator basis, but the card's operator "
            f"has shape {tuple(operator.shape)}, which only a tensor of shape [..., {operator.shape[0]}, {operator.shape[1]}] "
            f"can be coded on. {RESTORE_HINT}"
        )
    coefficients = _entry(entries, f"{key}.basis", torch.float32, where)
    flat_basis = basis.reshape(2, -1)
    slices = int(torch.Size(record["shape"]).numel()) // flat_basis.shape[1]
    if tuple(coefficients.shape) != (slices, len(BASIS)):
        raise ValueError(
            f"{where}: entry '{key}.basis' has shape {tuple(coefficients.shape)}, expected {(slices, len(BASIS))}. {RESTORE_HINT}"
        )
    return _combine(coefficients, flat_basis, record["shape"])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _coded_names(key: str) -> tuple[str, ...]:
    """Return every weights-file entry name that any codec may use for tensor ``key``."""
    return key, f"{key}.int8", f"{key}.int4", f"{key}.scale", f"{key}.basis"


def _check_entry_names(key: str, entries: dict[str, Tensor], record: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` when the weights file contains an entry of tensor ``key`` that ``record`` does not use.

    Without this check, deleting ``basis`` from a record would load the residual as the whole matrix.
    """
    codec = record["codec"]
    if codec in FLOAT_DTYPES:
        expected = {key}
    else:
        expected = {f"{key}.{codec}", f"{key}.scale"} | ({f"{key}.basis"} if "basis" in record else set())
    unused = sorted((set(_coded_names(key)) & entries.keys()) - expected)
    if unused:
        raise ValueError(
            f"{where}: the weights file contains {', '.join(map(repr, unused))}, which the storage record {record} of "
            f"tensor {key!r} does not use. {RESTORE_HINT}"
        )


def _entry(entries: dict[str, Tensor], name: str, dtype: torch.dtype, where: str) -> Tensor:
    if name not in entries:
        raise ValueError(f"{where}: the weights file has no entry {name!r}, which the card's storage record needs. {RESTORE_HINT}")
    if entries[name].dtype != dtype:
        raise ValueError(f"{where}: entry {name!r} of the weights file is {entries[name].dtype}, expected {dtype}. {RESTORE_HINT}")
    return entries[name]


def _pack_nibbles(q: Tensor) -> Tensor:
    """Pack integers in [-7, 7] two per byte: entry 2i in the low nibble, 2i+1 in the high one, each offset by 8."""
    offset = (q.to(torch.int16) + 8).to(torch.uint8)
    if offset.numel() % 2:
        offset = torch.cat([offset, offset.new_full((1,), 8)])
    pairs = offset.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).contiguous()


def _unpack_nibbles(packed: Tensor, numel: int) -> Tensor:
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:numel]
    return nibbles.to(torch.int8) - 8
