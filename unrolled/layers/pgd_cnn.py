r"""Unrolled proximal gradient descent with a learned CNN in place of the proximal operator.

Stage k (from 1) of an ``n_layers``-stage network takes a gradient step on the data term
:math:`\tfrac12\|Ax - y\|^2` and replaces the prox by a residual CNN:

.. math::
    v_k = z_k - \alpha_k A^H(A z_k - y), \qquad x_k = v_k + \mathrm{CNN}_k([v_k, c]),

where :math:`z_k = x_{k-1}` without momentum and the FISTA extrapolation
:math:`z_k = x_{k-1} + \tfrac{t_{k-1} - 1}{t_k}(x_{k-1} - x_{k-2})` with it (the Beck–Teboulle
sequence :math:`t_0 = 1`, :math:`t_k = (1 + \sqrt{1 + 4t_{k-1}^2})/2`, fixed, not learned). The
input channels :math:`c` condition the CNN on the sampling mask and the noise level, so that one
model serves several observed ratios and noise levels. The gradient step is
:func:`unrolled.solvers.proximal_gradient.gradient_step`, the same function the classical solver
calls.

Step sizes are learned relative to the operator: :math:`\alpha_k = \exp(s_k)/L` with
:math:`L = \|A\|_2^2` from ``operator.lipschitz_constant()`` and :math:`s_k` initialised at 0. The
last convolution of every CNN starts at zero (weights and bias), so the untrained network computes
``n_layers`` iterations of proximal gradient descent with step 1/L and the identity as prox
(Landweber iterations, or their FISTA-accelerated version with momentum).

Reference: Mardani, Sun, Donoho, Papyan, Monajemi, Vasanawala, Pauly, "Neural proximal gradient
descent for compressive imaging", NeurIPS 2018, arXiv:1806.03963.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unrolled.operators import LinearOperator, PixelMask
from unrolled.solvers.proximal_gradient import gradient_step


class ResidualCNN(nn.Module):
    """``depth`` 3 × 3 convolutions with ReLU between them, zero padding, and a zero-initialised last layer.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        channels: channels of the hidden layers.
        depth: number of convolutions, >= 2. Every convolution except the last is followed by a ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        self.output_layer = nn.Conv2d(channels, out_channels, 3, padding=1)
        # A zero output makes the untrained stage the identity after the gradient step.
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)
        self.hidden = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_layer(self.hidden(x))


def initial_estimate(operator: LinearOperator, y: Tensor) -> Tensor:
    """Return the starting image: the pseudo-inverse for a :class:`PixelMask`, :math:`A^H y` for other operators."""
    if isinstance(operator, PixelMask):
        return operator.pseudo_inverse(y)
    return operator.adjoint(y)


def _check_positive_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


class UnrolledPGDCNN(nn.Module):
    r"""Unrolled proximal gradient descent whose prox is a learned residual CNN per stage (see the module docstring).

    The input of :math:`\mathrm{CNN}_k` has the image channels (1 for real images, or 2 for complex
    ones: the real and imaginary parts), then the observed mask (with ``condition_on_mask``), then a
    constant channel with ``noise_std`` (with ``condition_on_noise``).

    Args:
        n_layers: number of stages K, >= 1.
        channels: channels of the hidden convolutions.
        depth: convolutions per CNN, >= 2 (ReLU between them).
        tied: one CNN shared by all stages when True, one per stage when False. The step sizes
            :math:`\alpha_k` are per stage in both cases.
        momentum: FISTA extrapolation between stages.
        condition_on_mask: add the observed mask of a :class:`~unrolled.operators.PixelMask` as a
            channel (1 = observed). Operators that measure every entry (``observed`` is None, such
            as block CS) get a channel of ones. Operators whose mask is not in image space (the
            k-space mask of :class:`~unrolled.operators.MaskedFourier`) raise ``ValueError``.
        condition_on_noise: add a constant channel with each image's ``noise_std``.
        complex_domain: the network reconstructs complex images (operators with
            ``complex_domain=True``, such as MRI); keyword only.
    """

    def __init__(
        self,
        n_layers: int,
        channels: int = 32,
        depth: int = 5,
        tied: bool = False,
        momentum: bool = False,
        condition_on_mask: bool = True,
        condition_on_noise: bool = True,
        *,
        complex_domain: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("n_layers", n_layers, 1)
        _check_positive_int("channels", channels, 1)
        _check_positive_int("depth", depth, 2)
        self.n_layers = n_layers
        self.tied = tied
        self.momentum = momentum
        self.condition_on_mask = condition_on_mask
        self.condition_on_noise = condition_on_noise
        self.complex_domain = complex_domain

        image_channels = 2 if complex_domain else 1
        in_channels = image_channels + int(condition_on_mask) + int(condition_on_noise)
        self.cnns = nn.ModuleList(
            ResidualCNN(in_channels, image_channels, channels, depth) for _ in range(1 if tied else n_layers)
        )
        # alpha_k = exp(log_step_scale[k]) / L, so the step stays positive and starts at 1/L.
        self.log_step_scale = nn.Parameter(torch.zeros(n_layers))

    def step_sizes(self, lipschitz: float) -> Tensor:
        r"""Return the learned step sizes :math:`\alpha_k = \exp(s_k)/L` of the stages, shape (n_layers,)."""
        return torch.exp(self.log_step_scale) / lipschitz

    def forward(
        self, y: Tensor, operator: LinearOperator, noise_std: Tensor | float | None = None, all_stages: bool = False
    ) -> Tensor | list[Tensor]:
        """Reconstruct images of shape (..., H, W) from measurements ``y`` of shape (..., *operator.out_shape).

        Args:
            y: measurements; the leading dimensions are the batch.
            operator: the forward operator A, with a 2-D ``in_shape`` (H, W).
            noise_std: measurement noise standard deviation on the [0, 1] image scale, a number or a
                tensor of the batch shape (one per image). Required with ``condition_on_noise``,
                ignored otherwise.
            all_stages: return the list of the ``n_layers`` stage outputs instead of the last one.

        L is recomputed from ``operator.lipschitz_constant()`` at every call: a closed form for pixel
        masks, block CS and Fourier sampling, a power iteration for a dense
        :class:`~unrolled.operators.MatrixOperator`.

        Raises:
            ValueError: the operator or ``noise_std`` does not fit the network's configuration.
        """
        self._check_operator(operator)
        operator.check_measurements(y)
        # Measurements follow the network's precision (the tasks' evaluation sets are float64).
        real_dtype = self.log_step_scale.dtype
        y = y.to(real_dtype.to_complex() if torch.is_complex(y) else real_dtype)
        batch_shape = y.shape[: y.ndim - len(operator.out_shape)]
        lipschitz = operator.lipschitz_constant()
        step_sizes = self.step_sizes(lipschitz)

        x = initial_estimate(operator, y)
        conditions = self._conditions(operator, noise_std, batch_shape, x)
        x_prev = x
        t = 1.0
        estimates: list[Tensor] = []
        for k in range(self.n_layers):
            z = x
            if self.momentum:
                t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
                z = x + ((t - 1.0) / t_next) * (x - x_prev)
                t = t_next
            v = gradient_step(z, y, operator, step_sizes[k])
            x_prev, x = x, v + self._residual(k, v, conditions)
            if all_stages:
                estimates.append(x)
        return estimates if all_stages else x

    def _check_operator(self, operator: LinearOperator) -> None:
        if len(operator.in_shape) != 2:
            raise ValueError(
                f"UnrolledPGDCNN reconstructs 2-D images, but the operator's in_shape is {operator.in_shape}. "
                "Give the operator an (H, W) in_shape."
            )
        if operator.complex_domain != self.complex_domain:
            raise ValueError(
                f"the operator has complex_domain={operator.complex_domain}, but the network was built with "
                f"complex_domain={self.complex_domain}. Build it with complex_domain={operator.complex_domain}."
            )
        if self.condition_on_mask and operator.observed is not None and not isinstance(operator, PixelMask):
            raise ValueError(
                f"condition_on_mask needs a mask in image space, but {type(operator).__name__} observes a subset of "
                "its measurement space. Build the network with condition_on_mask=False for this operator."
            )

    def _conditions(
        self, operator: LinearOperator, noise_std: Tensor | float | None, batch_shape: torch.Size, x: Tensor
    ) -> Tensor | None:
        """Return the conditioning channels, shape (N, C, H, W) with N the flattened batch, or None without conditioning."""
        image_shape = (*batch_shape, *operator.in_shape)
        real_dtype = x.real.dtype
        channels = []
        if self.condition_on_mask:
            observed = operator.observed
            if observed is None:
                mask = torch.ones(image_shape, dtype=real_dtype, device=x.device)
            else:
                mask = observed.to(x.device, real_dtype).expand(image_shape)
            channels.append(mask)
        if self.condition_on_noise:
            if noise_std is None:
                raise ValueError(
                    "noise_std is missing, but the network was built with condition_on_noise=True. Pass the "
                    "measurement noise standard deviation on the [0, 1] scale (0.0 for noiseless data)."
                )
            if not isinstance(noise_std, Tensor) and not (math.isfinite(noise_std) and noise_std >= 0):
                raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}.")
            level = torch.as_tensor(noise_std, dtype=real_dtype, device=x.device)
            try:
                level = level.expand(batch_shape)
            except RuntimeError as error:
                raise ValueError(
                    f"noise_std of shape {tuple(level.shape)} must be a number or have the batch shape {tuple(batch_shape)}."
                ) from error
            channels.append(level[(...,) + (None,) * len(operator.in_shape)].expand(image_shape))
        if not channels:
            return None
        return torch.stack(channels, dim=-3).reshape(-1, len(channels), *operator.in_shape)

    def _residual(self, k: int, v: Tensor, conditions: Tensor | None) -> Tensor:
        """Return :math:`\\mathrm{CNN}_k([v, c])` with the shape and dtype of ``v``."""
        image_shape = v.shape[-2:]
        if torch.is_complex(v):
            inputs = torch.stack([v.real, v.imag], dim=-3).reshape(-1, 2, *image_shape)
        else:
            inputs = v.reshape(-1, 1, *image_shape)
        if conditions is not None:
            inputs = torch.cat([inputs, conditions], dim=1)
        output = self.cnns[0 if self.tied else k](inputs)
        if torch.is_complex(v):
            return torch.complex(output[:, 0], output[:, 1]).reshape(v.shape)
        return output.reshape(v.shape)
