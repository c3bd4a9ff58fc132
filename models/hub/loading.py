"""List and load shipped and exported networks: read the card, check it, verify the sha256, then read the weights.

The loader reads and checks the card before it touches the weights file: the network named in the
card must be registered and ``weights_file`` must be a plain file name. The sha256 of the weights
file must then match the card before any tensor is read, and only after that are the tensors read
(with safetensors, no pickle) and the registered class instantiated.

Cards of format 2 and 3 leave the operator A out of the weights file: the loader regenerates it
from the problem spec and seeds in the card and checks it against the card's probes ``u_iᵀ A v_i``.
Format 3 adds ``weights_storage``, the codec of each large tensor (:mod:`models.hub.storage`), and
the loader decodes those tensors to float32. Cards of format 1 (written before December 2026) keep
A in the weights file, and they still load, as do those of format 2 (float16 or float32 tensors).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from models.hub.storage import decode_state
from models.registry import NETWORKS, build_network, unknown_name_error
from unrolled.layers import UnrolledISTA
from unrolled.problems import Problem, build_problem

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CHECKPOINTS_ENV = "UNROLLED_ZOO_CHECKPOINTS"
CARD_FORMAT = 3
# Seeds of the probe vectors u_i, v_i whose bilinear forms u_iᵀ A v_i fingerprint the operator in a card.
PROBE_SEEDS = (101, 102, 103, 104)
# Relative tolerance for the probes of a regenerated operator. Rounding A to float32 moves them by
# about 1e-7 relative, and another operator of the same shape moves them by order 1.
PROBE_RTOL = 1e-5
# Operator dtypes a card may name, so that a card cannot select an arbitrary attribute of torch.
OPERATOR_DTYPES = {"float32": torch.float32, "float64": torch.float64}
REQUIRED_CARD_FIELDS = ("network", "n_layers", "network_kwargs", "problem", "weights_file", "sha256")


@dataclass
class LoadedModel:
    """A network with its card and its problem: the card's (the test set regenerates from the seeds), or the one passed to the loader."""

    name: str
    network: UnrolledISTA
    problem: Problem
    card: dict[str, Any]


def checkpoints_dir() -> Path:
    """Folder of the shipped checkpoints: ``$UNROLLED_ZOO_CHECKPOINTS`` or ``checkpoints/`` of this checkout."""
    return Path(os.environ.get(CHECKPOINTS_ENV, Path(__file__).resolve().parents[2] / "checkpoints"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(card_path: Path) -> dict[str, Any]:
    """Read the model card at ``card_path`` and check it without opening the weights file.

    Raises ``ValueError`` when a required field is missing, when the card names a network that is
    not registered in :data:`models.registry.NETWORKS`, or when ``weights_file`` is not a plain file name.
    """
    card = json.loads(Path(card_path).read_text())
    if not isinstance(card, dict):
        raise ValueError(f"model card {card_path} must contain a JSON object, got {type(card).__name__}.")
    missing = [field for field in REQUIRED_CARD_FIELDS if field not in card]
    if missing:
        raise ValueError(
            f"model card {card_path} has no {', '.join(missing)}; expected the fields {', '.join(REQUIRED_CARD_FIELDS)} "
            "as written by models.hub.export_model. Re-export the model."
        )
    if card["network"] not in NETWORKS:
        error = unknown_name_error("network", str(card["network"]), list(NETWORKS))
        raise ValueError(
            f"{error} The model card {card_path} names it. Nothing was loaded: import the module that "
            "registers this network (models.registry.register_network) before loading, or correct the card."
        )
    card_format = card.get("format", 1)
    if isinstance(card_format, bool) or not isinstance(card_format, int) or not 1 <= card_format <= CARD_FORMAT:
        raise ValueError(
            f"model card {card_path} has format {card_format!r}; this version of unrolled-zoo reads formats 1 to "
            f"{CARD_FORMAT}. Update unrolled-zoo to load it."
        )
    if Path(card["weights_file"]).name != card["weights_file"] or card["weights_file"] == "..":
        raise ValueError(f"weights_file in {card_path} must be a plain file name, got {card['weights_file']!r}.")
    return card


def card_codec(card: dict[str, Any]) -> str | None:
    """Return the storage codec of a card's large tensors, or None when the card does not name one."""
    storage = card.get("storage") if isinstance(card.get("storage"), dict) else {}
    # Format-2 cards name the dtype of their large tensors in weights_dtype.
    return storage.get("codec") or card.get("weights_dtype")


def as_problem(problem: Problem | dict[str, Any]) -> Problem:
    """Return ``problem`` itself, or the problem rebuilt from a spec dict (see :meth:`Problem.spec`)."""
    if isinstance(problem, Problem):
        return problem
    if isinstance(problem, dict):
        return build_problem(problem)
    raise TypeError(f"problem must be a unrolled.problems.Problem or its spec dict, got {type(problem).__name__}.")


def operator_probes(A: Tensor) -> list[float]:
    """Return ``u_iᵀ A v_i`` in float64 for the Gaussian vectors seeded by :data:`PROBE_SEEDS`: a fingerprint of A."""
    A64 = A.detach().to("cpu", torch.float64)
    probes = []
    for seed in PROBE_SEEDS:
        generator = torch.Generator().manual_seed(seed)
        u = torch.randn(A64.shape[0], generator=generator, dtype=torch.float64)
        v = torch.randn(A64.shape[1], generator=generator, dtype=torch.float64)
        probes.append(float(u @ A64 @ v))
    return probes


def card_operator(card: dict[str, Any], card_path: Path, card_problem: Problem) -> Tensor:
    """Regenerate the operator a card of format 2 or 3 was trained with from its problem, and check it against the card's probes.

    Raises ``ValueError`` when the probes disagree: the card was edited, or the random number
    generator of this torch build draws another operator from the same seeds.
    """
    operator = card.get("operator")
    if not isinstance(operator, dict) or "probes" not in operator or "dtype" not in operator:
        raise ValueError(
            f"model card {card_path} is missing the operator record (dtype and probes) that formats 2 and later need "
            "to regenerate A. Re-export the model with models.hub.export_model."
        )
    if operator["dtype"] not in OPERATOR_DTYPES:
        raise ValueError(
            f"model card {card_path} gives the operator dtype {operator['dtype']!r}; expected one of "
            f"{', '.join(OPERATOR_DTYPES)}. Correct the card or re-export the model."
        )
    A = card_problem.A.to(OPERATOR_DTYPES[operator["dtype"]])
    expected = torch.tensor(operator["probes"], dtype=torch.float64)
    actual = torch.tensor(operator_probes(A), dtype=torch.float64)
    # The absolute term keeps a probe near zero from demanding more precision than rounding leaves.
    if not torch.allclose(actual, expected, rtol=PROBE_RTOL, atol=PROBE_RTOL * expected.abs().max().item()):
        raise ValueError(
            f"the operator A regenerated from the problem in {card_path} has probes {actual.tolist()}, but the card "
            f"records {expected.tolist()}. Either the card's problem or probes were edited, or this torch build "
            f"(torch {torch.__version__}) draws another A from the same seeds; the weights fit only the original A. Restore "
            "the card, or load the model with the torch version named in the card's machine record."
        )
    return A


def check_operator_matches(name: str, trained_A: Tensor, card: dict[str, Any], problem: Problem) -> None:
    """Check that the operator ``trained_A`` stored with model ``name`` fits ``problem``.

    Raises ``ValueError`` naming both shapes when they differ. Logs a warning when the shapes agree
    but the entries differ, because the weights were then learned for another operator.
    """
    trained_shape, problem_shape = tuple(trained_A.shape), tuple(problem.A.shape)
    if trained_shape != problem_shape:
        raise ValueError(
            f"model {name} was trained for an operator A of shape {trained_shape} (problem {card['problem'].get('name')!r}), "
            f"but the problem passed has A of shape {problem_shape} (problem {problem.name!r}). Pass a problem with a "
            f"{trained_shape[0]} x {trained_shape[1]} operator, or choose a model trained for {problem_shape[0]} x "
            f"{problem_shape[1]} (models.list_pretrained(), python -m models.hub list)."
        )
    if not torch.equal(trained_A, problem.A.to(trained_A.device, trained_A.dtype)):
        log.warning(
            "model %s: the weights were learned for another operator A of the same shape %s (card problem %s, "
            "problem passed %s); expect a test NMSE worse than the card's, or train for this operator.",
            name,
            trained_shape,
            card["problem"],
            problem.spec(),
        )
        return
    differing = sorted(
        key for key in {**card["problem"], **problem.spec()} if card["problem"].get(key) != problem.spec().get(key)
    )
    if differing:
        log.info("model %s: same operator A, but the problem passed differs from the card's in %s.", name, ", ".join(differing))


def check_sha256(weights_path: Path, card: dict[str, Any], card_path: Path) -> None:
    """Raise ``ValueError`` unless the sha256 of ``weights_path`` is the one its card records."""
    actual = sha256_file(weights_path)
    if actual != card["sha256"]:
        raise ValueError(
            f"sha256 of {weights_path} is {actual}, but its card {card_path} records {card['sha256']}; "
            "the file is corrupt or was replaced. Nothing was loaded: restore the file or re-export the model."
        )


def load_card_and_network(card_path: Path, name: str, problem: Problem | dict[str, Any] | None = None) -> LoadedModel:
    """Load the network described by ``card_path`` after checking the card and the sha256 of its weights file.

    With ``problem`` (a :class:`~unrolled.problems.Problem` or its spec dict), the operator the model
    was trained with (regenerated from the card, or read from the weights of a format-1 card) must
    have the shape of ``problem.A`` (``ValueError`` otherwise), and the returned
    :attr:`LoadedModel.problem` is that problem. Without it the problem is rebuilt from the card.
    """
    card = read_card(card_path)
    weights_path = Path(card_path).parent / card["weights_file"]
    check_sha256(weights_path, card, card_path)
    state = load_file(str(weights_path))
    card_problem = build_problem(card["problem"])
    # Format-1 cards keep A in the weights file; later formats regenerate it from the card's seeds.
    A = state.pop("A") if "A" in state else card_operator(card, card_path, card_problem)
    if "weights_storage" in card:
        state = decode_state(state, card["weights_storage"], f"model card {card_path}", A)
    if problem is None:
        problem = card_problem
    else:
        problem = as_problem(problem)
        check_operator_matches(name, A, card, problem)
    network = build_network(card["network"], A, card["n_layers"], **card["network_kwargs"])
    # load_state_dict casts float16 weights of format-2 cards to the network's dtype.
    try:
        network.load_state_dict({**state, "A": A}, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"the weights in {weights_path} do not fit the network {card['network']!r} that the card {card_path} describes: "
            f"{str(error).strip().rstrip('.')}. Restore the card and its weights file, or re-export the model."
        ) from error
    network.eval()
    return LoadedModel(name=name, network=network, problem=problem, card=card)


def load_run(folder: str | Path, problem: Problem | dict[str, Any] | None = None) -> LoadedModel:
    """Load the model exported by ``train.py`` into its run folder (``problem``: see :func:`load_card_and_network`)."""
    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(f"no {CARD_FILE} in {folder}; expected the run folder of a finished train.py run.")
    return load_card_and_network(card_path, folder.name, problem)


def list_pretrained() -> list[str]:
    """Names of the shipped pretrained models (``model.tag``), sorted."""
    return sorted(path.stem for path in checkpoints_dir().glob("*.json"))


def pretrained_card_path(name: str) -> Path:
    """Return the card path of the shipped model ``name``; ``ValueError`` listing the close matches if there is none."""
    known = list_pretrained()
    if name not in known:
        raise unknown_name_error("pretrained model", name, known)
    return checkpoints_dir() / f"{name}.json"


def load_pretrained(name: str, problem: Problem | dict[str, Any] | None = None) -> LoadedModel:
    """Load the shipped model ``name`` (see :func:`list_pretrained`) offline, with sha256 verification.

    ``problem``: the problem the network is meant for, checked against the model's operator (see
    :func:`load_card_and_network`).
    """
    return load_card_and_network(pretrained_card_path(name), name, problem)
