"""Codecs for the large learned tensors of a weights file: float32, float16, and 8- or 4-bit integers with group scales.

The integer codecs quantize symmetrically with one scale per group of ``g`` consecutive entries
along the last axis (group-wise absmax quantization, as in Dettmers et al., "LLM.int8()", NeurIPS
2022, and Frantar et al., "GPTQ", ICLR 2023). With ``b`` bits, ``q_max = 2^(b-1) - 1``, and a group
``w`` of entries,

    s = max_i |w_i| / q_max,    q_i = round(w_i / s) ∈ [-q_max, q_max],    ŵ_i = q_i · s,

so every entry moves by at most ``s / 2``. int4 packs two entries per byte. Per entry, with
float32 scales, int8 takes ``1 + 4/g`` bytes and int4 ``1/2 + 4/g`` bytes, against 4 for float32.

A weights file holds, for a tensor ``key`` stored with an integer codec, the entries
``key.int8`` or ``key.int4`` (integers) and ``key.scale`` (float32, one per group). The card lists
each such tensor with its codec, shape and group size (:func:`encode` returns that record), and
:func:`decode` rebuilds the float32 tensor from the entries and the record. Decoding checks the
record against the entries, so an edited card fails with an error instead of loading wrong weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Codecs from the smallest file to the largest, the order in which models.hub.export.choose_storage tries them.
CODECS = ("int4", "int8", "float16", "float32")
INTEGER_BITS = {"int4": 4, "int8": 8}
# Ending of the errors of decode: what the user can do about a record that does not fit.
RESTORE_HINT = "The card or its weights file was edited or is damaged: restore both, or re-export the model."
FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# A group is the largest divisor of the last axis from MIN_GROUP_SIZE to MAX_GROUP_SIZE (50 for 500
# columns, 64 for 512), or the whole last axis when none divides it (a prime number of columns).
MIN_GROUP_SIZE, MAX_GROUP_SIZE = 16, 64


def group_size(shape: tuple[int, ...] | torch.Size) -> int:
    """Return the group size for a tensor of ``shape`` (see :data:`MAX_GROUP_SIZE`)."""
    columns = shape[-1] if len(shape) else 1
    divisors = [size for size in range(MIN_GROUP_SIZE, MAX_GROUP_SIZE + 1) if columns % size == 0]
    return max(divisors) if divisors and columns > MAX_GROUP_SIZE else max(columns, 1)


def _q_max(codec: str) -> int:
    return 2 ** (INTEGER_BITS[codec] - 1) - 1


def _check_codec(codec: Any, where: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"{where} names the storage codec {codec!r}; expected one of {', '.join(CODECS)}.")


def encode(key: str, tensor: Tensor, codec: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Encode ``tensor`` with ``codec``: return the entries of the weights file and the card's record of them.

    A float codec gives the single entry ``key`` and the record ``{"codec": codec}``. An integer
    codec gives ``key.int8`` or ``key.int4`` with ``key.scale``, and its record adds ``shape`` and
    ``group_size``. Raises ``ValueError`` for a codec not in :data:`CODECS`.
    """
    _check_codec(codec, "encode")
    tensor = tensor.detach().cpu()
    if codec in FLOAT_DTYPES:
        return {key: tensor.to(FLOAT_DTYPES[codec]).contiguous()}, {"codec": codec}
    size = group_size(tensor.shape)
    groups = tensor.to(torch.float32).reshape(-1, size)
    q_max = _q_max(codec)
    scale = groups.abs().amax(dim=1, keepdim=True) / q_max
    # An all-zero group has scale 0, so it is divided by 1 instead, which keeps its integers at 0.
    q = torch.round(groups / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp_(-q_max, q_max).to(torch.int8)
    record = {"codec": codec, "shape": list(tensor.shape), "group_size": size}
    if codec == "int8":
        return {f"{key}.int8": q.contiguous(), f"{key}.scale": scale.contiguous()}, record
    return {f"{key}.int4": _pack_nibbles(q.flatten()), f"{key}.scale": scale.contiguous()}, record


def decode(key: str, entries: dict[str, Tensor], record: Any, where: str) -> Tensor:
    """Rebuild tensor ``key`` from the weights-file ``entries`` and its card ``record`` (see :func:`encode`).

    Raises ``ValueError``, naming ``where`` (the card), when the record is malformed or does not fit
    the entries: an unknown codec, a missing entry, or a shape, group size or dtype that disagrees.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: the storage record of {key!r} must be an object, got {record!r}. {RESTORE_HINT}")
    codec = record.get("codec")
    _check_codec(codec, f"{where}, tensor {key!r},")
    if codec in FLOAT_DTYPES:
        tensor = _entry(entries, key, FLOAT_DTYPES[codec], where)
        return tensor.to(torch.float32)
    shape, size = record.get("shape"), record.get("group_size")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(size, int) and size > 0):
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
    if numel and (q.min().item() < -_q_max(codec) or q.max().item() > _q_max(codec)):
        raise ValueError(f"{where}: tensor {key!r} holds integers outside ±{_q_max(codec)}, which {codec} never writes. {RESTORE_HINT}")
    return (q.reshape(-1, size).to(torch.float32) * scale.reshape(-1, 1)).reshape(shape)


def round_through(tensor: Tensor, codec: str) -> Tensor:
    """Return ``tensor`` as it loads after storage with ``codec``, in ``tensor``'s dtype."""
    entries, record = encode("t", tensor, codec)
    return decode("t", entries, record, "round_through").to(tensor.dtype)


def encode_state(state: dict[str, Tensor], codecs: dict[str, str]) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Encode the tensors of ``state`` named in ``codecs``; return the weights-file entries and the card's records.

    Tensors not named in ``codecs`` are stored as they are.
    """
    entries, records = {}, {}
    for key, tensor in state.items():
        if key in codecs:
            encoded, records[key] = encode(key, tensor, codecs[key])
            entries.update(encoded)
        else:
            entries[key] = tensor.detach().cpu().contiguous()
    return entries, records


def decode_state(entries: dict[str, Tensor], records: Any, where: str) -> dict[str, Tensor]:
    """Return the state dict of a weights file: each tensor in ``records`` decoded, the other entries unchanged.

    Raises ``ValueError`` naming ``where`` when ``records`` is not an object or a record does not fit.
    """
    if not isinstance(records, dict):
        raise ValueError(f"{where}: 'weights_storage' must map tensor names to storage records, got {records!r}.")
    state = dict(entries)
    for key, record in records.items():
        tensor = decode(key, entries, record, where)
        for name in (key, f"{key}.int8", f"{key}.int4", f"{key}.scale"):
            state.pop(name, None)
        state[key] = tensor
    return state


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
