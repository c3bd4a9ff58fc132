"""List and load shipped and exported networks: read the card, check it, verify the sha256, then read the weights.

The loader reads and checks the card before it touches the weights file: the network named in the
card must be registered and ``weights_file`` must be a plain file name. The sha256 of the weights
file must then match the card before any tensor is read, and only after that are the tensors read
(with safetensors, no pickle) and the registered class instantiated.
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

from models.registry import NETWORKS, build_network, unknown_name_error
from unrolled.layers import UnrolledISTA
from unrolled.problems import Problem, build_problem

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CHECKPOINTS_ENV = "UNROLLED_ZOO_CHECKPOINTS"
CARD_FORMAT = 1
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
    if Path(card["weights_file"]).name != card["weights_file"] or card["weights_file"] == "..":
        raise ValueError(f"weights_file in {card_path} must be a plain file name, got {card['weights_file']!r}.")
    return card


def as_problem(problem: Problem | dict[str, Any]) -> Problem:
    """Return ``problem`` itself, or the problem rebuilt from a spec dict (see :meth:`Problem.spec`)."""
    if isinstance(problem, Problem):
        return problem
    if isinstance(problem, dict):
        return build_problem(problem)
    raise TypeError(f"problem must be a unrolled.problems.Problem or its spec dict, got {type(problem).__name__}.")


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

    With ``problem`` (a :class:`~unrolled.problems.Problem` or its spec dict), the operator stored in
    the weights must have the shape of ``problem.A`` (``ValueError`` otherwise), and the returned
    :attr:`LoadedModel.problem` is that problem. Without it the problem is rebuilt from the card.
    """
    card = read_card(card_path)
    weights_path = Path(card_path).parent / card["weights_file"]
    check_sha256(weights_path, card, card_path)
    state = load_file(str(weights_path))
    if problem is None:
        problem = build_problem(card["problem"])
    else:
        problem = as_problem(problem)
        if "A" not in state:
            raise ValueError(
                f"weights file {weights_path} contains no operator A, so it cannot be checked against the problem passed."
            )
        check_operator_matches(name, state["A"], card, problem)
    network = build_network(card["network"], state["A"], card["n_layers"], **card["network_kwargs"])
    network.load_state_dict(state, strict=True)
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

    ``problem``: the problem the network is meant for, checked against the stored operator (see
    :func:`load_card_and_network`).
    """
    return load_card_and_network(pretrained_card_path(name), name, problem)
