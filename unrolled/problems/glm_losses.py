r"""Per-sample losses of generalised linear models, written on the margins :math:`z = \tilde x^\top W`.

A loss :math:`\psi(z, y)` of a linear model enters the finite sum through its margins only, so the
gradient of one sample is an outer product :math:`\nabla_W \psi(\tilde x^\top W, y) = \tilde x\,\psi'(z, y)^\top`.
The variance-reduced solvers rely on that form: SAGA stores one derivative vector of length k per
sample instead of a full gradient.

Each loss states ``curvature``, a bound on the largest eigenvalue of :math:`\partial^2\psi/\partial z^2`
over all z and y, so that :math:`L_i = \mathrm{curvature}\cdot\|\tilde x_i\|^2` bounds the
Lipschitz constant of the gradient of sample i.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor


class GLMLoss(abc.ABC):
    """A loss on margins: ``value`` and ``derivative`` of :math:`\\psi(z, y)` with respect to z, per sample."""

    name: str
    curvature: float

    @abc.abstractmethod
    def value(self, margins: Tensor, targets: Tensor) -> Tensor:
        """Return :math:`\\psi(z_i, y_i)` of shape (..., n) for margins (..., n, k) and targets (..., n)."""

    @abc.abstractmethod
    def derivative(self, margins: Tensor, targets: Tensor) -> Tensor:
        """Return :math:`\\partial\\psi/\\partial z` at each sample, shape (..., n, k)."""

    @abc.abstractmethod
    def check_targets(self, targets: Tensor) -> None:
        """Raise ``ValueError`` naming the offending values when the targets do not suit this loss."""

    def n_outputs(self, targets: Tensor) -> int:
        """Return k, the number of margins per sample (columns of the weight matrix)."""
        return 1

    def second_derivative(self, margins: Tensor, targets: Tensor) -> Tensor | None:
        """Return :math:`\\partial^2\\psi/\\partial z^2` of shape (..., n) for losses with one margin, None otherwise."""
        return None

    def hessian_product(self, margins: Tensor, targets: Tensor, direction: Tensor) -> Tensor:
        r"""Return :math:`\nabla^2_z\psi(z_i, y_i)\,u_i` for every sample, shape (..., n, k), with u the ``direction`` (..., n, k).

        Losses with one margin multiply by :meth:`second_derivative`; the multinomial loss overrides this.
        """
        return self.second_derivative(margins, targets)[..., None] * direction


class SquaredLoss(GLMLoss):
    r""":math:`\psi(z, y) = \tfrac12 (z - y)^2`, least squares (with ℓ1: the Lasso)."""

    name = "squared"
    curvature = 1.0

    def value(self, margins: Tensor, targets: Tensor) -> Tensor:
        return 0.5 * (margins[..., 0] - targets) ** 2

    def derivative(self, margins: Tensor, targets: Tensor) -> Tensor:
        return margins - targets[..., None]

    def second_derivative(self, margins: Tensor, targets: Tensor) -> Tensor:
        return torch.ones_like(margins[..., 0])

    def check_targets(self, targets: Tensor) -> None:
        if not torch.isfinite(targets).all():
            raise ValueError("least-squares targets must be finite; found NaN or infinite values. Drop or impute those samples.")


class LogisticLoss(GLMLoss):
    r"""Binary logistic loss :math:`\psi(z, y) = \log(1 + e^{-yz})` with labels :math:`y \in \{-1, +1\}`.

    :math:`\psi'' = \sigma(z)\sigma(-z) \le 1/4`.
    """

    name = "logistic"
    curvature = 0.25

    def value(self, margins: Tensor, targets: Tensor) -> Tensor:
        # log(exp(0) + exp(-yz)) = log(1 + exp(-yz)) without overflow; softplus would drop the log1p
        # term beyond its threshold of 20 and disagree with the exact derivative there.
        negative_margin = -targets * margins[..., 0]
        return torch.logaddexp(torch.zeros_like(negative_margin), negative_margin)

    def derivative(self, margins: Tensor, targets: Tensor) -> Tensor:
        return (-targets * torch.sigmoid(-targets * margins[..., 0]))[..., None]

    def second_derivative(self, margins: Tensor, targets: Tensor) -> Tensor:
        probability = torch.sigmoid(margins[..., 0])
        return probability * (1.0 - probability)

    def check_targets(self, targets: Tensor) -> None:
        labels = torch.unique(targets)
        if not bool(((labels == -1) | (labels == 1)).all()):
            raise ValueError(
                f"logistic loss expects labels in {{-1, +1}}, got the values {labels.tolist()[:10]}. "
                "Map the two classes to -1 and +1 (load_dataset does this for binary tasks)."
            )


class MultinomialLoss(GLMLoss):
    r"""Multinomial logistic (softmax cross-entropy) loss :math:`\psi(z, y) = \log\sum_c e^{z_c} - z_y`, labels 0..k-1.

    The Hessian :math:`\operatorname{diag}(p) - pp^\top` (p the softmax) has eigenvalues at most 1/2.
    """

    name = "multinomial"
    curvature = 0.5

    def __init__(self, n_classes: int) -> None:
        if n_classes < 2:
            raise ValueError(f"multinomial loss needs n_classes >= 2, got {n_classes}.")
        self.n_classes = n_classes

    def value(self, margins: Tensor, targets: Tensor) -> Tensor:
        return torch.logsumexp(margins, dim=-1) - margins.gather(-1, targets.long()[..., None])[..., 0]

    def derivative(self, margins: Tensor, targets: Tensor) -> Tensor:
        probabilities = torch.softmax(margins, dim=-1)
        return probabilities.scatter_add(-1, targets.long()[..., None], -torch.ones_like(probabilities[..., :1]))

    def check_targets(self, targets: Tensor) -> None:
        labels = torch.unique(targets)
        valid = (labels == labels.round()) & (labels >= 0) & (labels < self.n_classes)
        if not bool(valid.all()):
            raise ValueError(
                f"multinomial loss expects integer labels in 0..{self.n_classes - 1}, "
                f"got the values {labels[~valid].tolist()[:10]}. Encode the classes as 0..k-1."
            )

    def n_outputs(self, targets: Tensor) -> int:
        return self.n_classes

    def hessian_product(self, margins: Tensor, targets: Tensor, direction: Tensor) -> Tensor:
        # (diag(p) - p pᵀ) u = p ⊙ u - p (pᵀu), without forming the k × k Hessian.
        probabilities = torch.softmax(margins, dim=-1)
        return probabilities * (direction - (probabilities * direction).sum(-1, keepdim=True))


def make_loss(name: str, n_classes: int | None = None) -> GLMLoss:
    """Return the loss called ``name``: ``squared``, ``logistic`` or ``multinomial`` (which needs ``n_classes``)."""
    if name == "squared":
        return SquaredLoss()
    if name == "logistic":
        return LogisticLoss()
    if name == "multinomial":
        if n_classes is None:
            raise ValueError("the multinomial loss needs n_classes.")
        return MultinomialLoss(n_classes)
    raise ValueError(f"unknown loss {name!r}; expected 'squared', 'logistic' or 'multinomial'.")
