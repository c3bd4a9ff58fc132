r"""ISTA-Net+: unrolled ISTA for block compressive sensing with learned convolutional transforms.

Phase k (from 1) of an ``n_layers``-phase network, on measurements :math:`y_b = \Phi x_b` of
B × B blocks (:class:`~unrolled.operators.BlockCS`):

.. math::
    r_k = x_{k-1} - \rho_k \Phi^\top(\Phi x_{k-1} - y), \qquad
    x_k = r_k + G_k\big(\tilde F_k(\operatorname{soft}(F_k(D_k r_k), \theta_k))\big),

where the gradient step acts on each block, :math:`D_k` is a 3 × 3 convolution from 1 to C
channels, :math:`F_k` and :math:`\tilde F_k` are conv–ReLU–conv blocks on C channels,
:math:`\operatorname{soft}` is soft-thresholding (:func:`unrolled.prox.prox_l1`) and :math:`G_k`
is a 3 × 3 convolution from C channels to 1. The convolutions have no bias and are zero-padded.
Every phase has its own :math:`D_k, F_k, \tilde F_k, G_k, \rho_k, \theta_k`, as in the authors'
code (``BasicBlock`` of ``Train_CS_ISTA_Net_plus.py`` in github.com/jianzhangcs/ISTA-Net-PyTorch):
Xavier-normal weights, :math:`\rho_k = 0.5` and :math:`\theta_k = 0.01` at initialisation.

The symmetry constraint requires :math:`\tilde F_k` to invert :math:`F_k`. Its residual per phase is
:math:`\tilde F_k(F_k(D_k r_k)) - D_k r_k`, and the training loss is
MSE + 0.01 · :meth:`ISTANetPlus.auxiliary_loss`.

The gradient step is :func:`unrolled.solvers.proximal_gradient.gradient_step`, the function the
classical solver calls. The first estimate is :math:`x_0 = Q_{\text{init}}\,y` per block, with the
least-squares map of :func:`least_squares_init`, or :math:`\Phi^\top y` before one is set.

Reference: Zhang, Ghanem, "ISTA-Net: interpretable optimization-inspired deep network for image
compressive sensing", CVPR 2018, arXiv:1706.07929.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unrolled.operators import BlockCS
from unrolled.prox import prox_l1
from unrolled.solvers.proximal_gradient import gradient_step

# Initial values of the authors' code.
INITIAL_STEP_SIZE = 0.5
INITIAL_THRESHOLD = 0.01
# Weight of the symmetry loss in the training loss of the authors' code.
SYMMETRY_LOSS_WEIGHT = 0.01


def least_squares_init(blocks: Tensor, phi: Tensor) -> Tensor:
    r"""Return :math:`Q_{\text{init}} = XY^\top(YY^\top)^{-1}`, the linear map from measurements to blocks that fits the training blocks best.

    With the training blocks as the columns of X and their measurements :math:`Y = \Phi X`,
    :math:`Q_{\text{init}}` minimises :math:`\|X - QY\|_F`. This is the initialisation matrix of
    ISTA-Net, and the first estimate of a block is :math:`Q_{\text{init}}\, y_b`.

    Args:
        blocks: training blocks, one flattened B × B block per row, shape (N, B²), with N >= m.
        phi: measurement matrix Φ of shape (m, B²).

    Returns:
        :math:`Q_{\text{init}}` of shape (B², m), float64.

    Raises:
        ValueError: the shapes do not match, or there are fewer blocks than measurements per block.
    """
    if blocks.ndim != 2 or phi.ndim != 2 or blocks.shape[1] != phi.shape[1]:
        raise ValueError(
            f"blocks must have shape (N, B²) and phi (m, B²) with the same B², got {tuple(blocks.shape)} and {tuple(phi.shape)}."
        )
    if blocks.shape[0] < phi.shape[0]:
        raise ValueError(
            f"least_squares_init needs at least m = {phi.shape[0]} blocks for YYᵀ to be invertible, got {blocks.shape[0]}."
        )
    X = blocks.to(torch.float64)
    Y = X @ phi.to(torch.float64).T
    # Q^T solves (Y^T Y) Q^T = Y^T X in the row convention, where X and Y hold one block per row.
    return torch.linalg.solve(Y.T @ Y, Y.T @ X).T


class ISTANetPhase(nn.Module):
    """The learned part of one ISTA-Net+ phase: the transforms D, F, F̃, G, the step size ρ and the threshold θ.

    Args:
        channels: feature maps C of the transforms.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.step_size = nn.Parameter(torch.tensor(INITIAL_STEP_SIZE))
        self.threshold = nn.Parameter(torch.tensor(INITIAL_THRESHOLD))
        self.conv_D = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.conv1_forward = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2_forward = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv1_backward = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2_backward = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv_G = nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)

    def transform(self, features: Tensor) -> Tensor:
        """Apply F (conv–ReLU–conv)."""
        return self.conv2_forward(F.relu(self.conv1_forward(features)))

    def inverse_transform(self, features: Tensor) -> Tensor:
        """Apply F̃ (conv–ReLU–conv), trained to invert F."""
        return self.conv2_backward(F.relu(self.conv1_backward(features)))

    def forward(self, r: Tensor) -> tuple[Tensor, Tensor]:
        r"""Return :math:`r + G(\tilde F(\operatorname{soft}(F(Dr), \theta)))` and the symmetry residual :math:`\tilde F(F(Dr)) - Dr`.

        Args:
            r: images or blocks after the gradient step, shape (N, 1, h, w).
        """
        features = self.conv_D(r)
        coefficients = self.transform(features)
        x = r + self.conv_G(self.inverse_transform(prox_l1(coefficients, self.threshold)))
        symmetry_residual = self.inverse_transform(coefficients) - features
        return x, symmetry_residual


class ISTANetPlus(nn.Module):
    r"""ISTA-Net+ for block compressive sensing (see the module docstring).

    The convolutions run on each B × B block separately by default (``block_wise=True``), with zero
    padding at the block borders. The authors' code does so in training and at test time, where it
    reconstructs the blocks of a test image independently and reassembles them. With
    ``block_wise=False`` the convolutions run on the whole image and see across block borders. The
    weights are the same in both modes, so the attribute can be changed after training.

    Args:
        n_layers: number of phases, >= 1 (9 in the paper).
        channels: feature maps of the transforms (32 in the paper).
        block_wise: convolve each block separately (True) or the whole image (False); keyword only.
    """

    def __init__(self, n_layers: int = 9, channels: int = 32, *, block_wise: bool = True) -> None:
        super().__init__()
        for name, value in (("n_layers", n_layers), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        self.n_layers = n_layers
        self.block_wise = block_wise
        self.phases = nn.ModuleList(ISTANetPhase(channels) for _ in range(n_layers))
        # Q_init of shape (B², m), or None for the initialisation Φᵀ.
        self.register_buffer("q_init", None)
        self._symmetry_residuals: list[Tensor] | None = None

    def set_initialization(self, q_init: Tensor) -> None:
        r"""Use :math:`x_0 = Q_{\text{init}}\,y` per block, with ``q_init`` of shape (B², m) from :func:`least_squares_init`."""
        if q_init.ndim != 2:
            raise ValueError(f"q_init must be a (B², m) matrix, got shape {tuple(q_init.shape)}.")
        self.q_init = q_init.detach().clone()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A fresh network has no q_init, whose shape depends on Φ, so take the shape from the checkpoint.
        q_init = state_dict.get(prefix + "q_init")
        if q_init is not None:
            self.q_init = torch.empty_like(q_init)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def initial_estimate(self, y: Tensor, operator: BlockCS) -> Tensor:
        r"""Return :math:`x_0 = Q_{\text{init}}\,y` per block, or :math:`\Phi^\top y` when no :math:`Q_{\text{init}}` is set."""
        if self.q_init is None:
            return operator.adjoint(y)
        expected_shape = (operator.phi.shape[1], operator.phi.shape[0])
        if tuple(self.q_init.shape) != expected_shape:
            raise ValueError(
                f"q_init has shape {tuple(self.q_init.shape)}, but the operator's Φ of shape {tuple(operator.phi.shape)} "
                f"needs {expected_shape}. Compute it with least_squares_init(blocks, operator.phi)."
            )
        return operator.from_blocks(y @ self.q_init.to(y.dtype).T)

    def forward(
        self, y: Tensor, operator: BlockCS, noise_std: Tensor | float | None = None, all_stages: bool = False
    ) -> Tensor | list[Tensor]:
        """Reconstruct images of shape (..., H, W) from block measurements ``y`` of shape (..., n_blocks, m).

        Args:
            y: measurements; the leading dimensions are the batch.
            operator: the block CS operator that produced ``y``.
            noise_std: accepted for the interface shared with the other image networks and
                ignored, because ISTA-Net+ does not condition on the noise level.
            all_stages: return the list of the ``n_layers`` phase outputs instead of the last one.

        Raises:
            TypeError: ``operator`` is not a :class:`~unrolled.operators.BlockCS`.
        """
        if not isinstance(operator, BlockCS):
            raise TypeError(f"ISTA-Net+ needs a BlockCS operator, got {type(operator).__name__}.")
        operator.check_measurements(y)

        # Measurements follow the network's precision (the tasks' evaluation sets are float64).
        y = y.to(self.phases[0].step_size.dtype)
        x = self.initial_estimate(y, operator)
        symmetry_residuals = []
        estimates: list[Tensor] = []
        for phase in self.phases:
            r = gradient_step(x, y, operator, phase.step_size)
            x, symmetry_residual = self._apply_phase(phase, r, operator)
            symmetry_residuals.append(symmetry_residual)
            if all_stages:
                estimates.append(x)
        self._symmetry_residuals = symmetry_residuals
        return estimates if all_stages else x

    def _apply_phase(self, phase: ISTANetPhase, r: Tensor, operator: BlockCS) -> tuple[Tensor, Tensor]:
        """Run ``phase`` on the blocks of ``r`` (or on the whole images) and return the images and the symmetry residual."""
        if not self.block_wise:
            x, symmetry_residual = phase(r.reshape(-1, 1, *r.shape[-2:]))
            return x.reshape(r.shape), symmetry_residual

        b = operator.block_size
        blocks = operator.to_blocks(r)
        x_blocks, symmetry_residual = phase(blocks.reshape(-1, 1, b, b))
        return operator.from_blocks(x_blocks.reshape(blocks.shape)), symmetry_residual

    def auxiliary_loss(self) -> Tensor:
        r"""Return the symmetry loss of the last forward call: :math:`\sum_k \operatorname{mean}\big((\tilde F_k(F_k(D_k r_k)) - D_k r_k)^2\big)`.

        The mean runs over the batch, channels and pixels of each phase and the phases are summed,
        as in the authors' training code. The training loss is MSE + ``SYMMETRY_LOSS_WEIGHT`` (0.01)
        times this value.

        Raises:
            RuntimeError: no forward call has run yet.
        """
        if self._symmetry_residuals is None:
            raise RuntimeError("auxiliary_loss needs the symmetry residuals of a forward call, but none has run. Call the network first.")
        return torch.stack([residual.square().mean() for residual in self._symmetry_residuals]).sum()
