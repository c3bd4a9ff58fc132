r"""ADMM-Net: scaled-form ADMM unrolled into stages with learned filters, penalties and nonlinearities.

Stage n (from 1) of an image :math:`x` with measurements :math:`y = Ax + w` computes, for L filters
:math:`H_l` (periodic k × k convolutions):

.. math::
    x^{(n)} &= \Big(A^HA + \textstyle\sum_l \rho_l H_l^H H_l\Big)^{-1}
              \Big[A^Hy + \textstyle\sum_l \rho_l H_l^H\big(z_l^{(n-1)} - \beta_l^{(n-1)}\big)\Big], \\
    c_l^{(n)} &= H_l x^{(n)}, \qquad
    z_l^{(n)} = S_{\mathrm{PLF}}\big(c_l^{(n)} + \beta_l^{(n-1)};\, q_l\big), \qquad
    \beta_l^{(n)} = \beta_l^{(n-1)} + \eta_l\big(c_l^{(n)} - z_l^{(n)}\big),

from :math:`x^{(0)} = z^{(0)} = \beta^{(0)} = 0`, with :math:`\rho_l`, :math:`H_l`, the control values
:math:`q_l` of the piecewise-linear function :math:`S_{\mathrm{PLF}}` and :math:`\eta_l` learned per
stage (untied). This is the step :func:`unrolled.solvers.admm.admm_step` of classical ADMM with
:math:`K = (H_1; \dots; H_L)`, the prox replaced by :math:`S_{\mathrm{PLF}}` and the dual step by
:math:`\eta_l`. With H the two periodic finite differences, :math:`S_{\mathrm{PLF}}` the soft-threshold
at reg/ρ and η = 1, a stage is one iteration of anisotropic TV-ADMM
(:func:`unrolled.solvers.admm_imaging.admm_tv`).

The x-update is exact for :class:`~unrolled.operators.MaskedFourier` in the complex domain, where
:math:`A^HA` and every periodic :math:`H_l^HH_l` are diagonal in the DFT basis
(``solve_normal`` with the spectrum :math:`\sum_l \rho_l|\hat H_l|^2`). For other operators it runs
a fixed number of conjugate-gradient steps, warm-started at the previous stage's x, through which
autograd differentiates.

NOTE: the exact solve divides by :math:`M^2 + \sum_l \rho_l|\hat H_l|^2` in k-space, which is 0 at a
frequency that the mask M does not sample and no filter responds to. Filters that sum to 0 (the
DCT filters without DC, finite differences) all vanish at the zero frequency, so the mask must
sample it, as :func:`~unrolled.operators.cartesian_mask` and :func:`~unrolled.operators.random_mask` do.

References:
    Yang, Sun, Li, Xu, "Deep ADMM-Net for compressive sensing MRI", NeurIPS 2016, arXiv:1705.06869.
    Yang, Sun, Li, Xu, "ADMM-CSNet: a deep learning approach for image compressive sensing",
    IEEE TPAMI 42(3), 2020.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unrolled.operators import LinearOperator, MaskedFourier
from unrolled.solvers.admm import ADMMIterate, admm_step
from unrolled.solvers.cg import conjugate_gradient
from unrolled.transforms import dct_matrix

FILTER_INITS = ("dct", "finite_difference")


def dct_filters(filter_size: int, n_filters: int, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Return ``n_filters`` 2-D DCT-II basis filters of size k × k without the constant (DC) one, shape (n_filters, k, k).

    Filter (a, b) is the outer product of rows a and b of the orthonormal DCT matrix, so each has unit
    ℓ2 norm and sums to 0. They are ordered by a + b, then a, so a smaller ``n_filters`` keeps the
    lowest frequencies. ``n_filters`` = k² − 1 gives the full basis without DC.
    """
    if not 1 <= n_filters <= filter_size**2 - 1:
        raise ValueError(
            f"n_filters must lie in [1, filter_size² - 1 = {filter_size**2 - 1}] for DCT filters of size {filter_size}, got {n_filters}."
        )
    basis = dct_matrix(filter_size, torch.float64)
    pairs = sorted(((a, b) for a in range(filter_size) for b in range(filter_size) if (a, b) != (0, 0)), key=lambda p: (p[0] + p[1], p[0]))
    return torch.stack([torch.outer(basis[a], basis[b]) for a, b in pairs[:n_filters]]).to(dtype)


def finite_difference_filters(filter_size: int, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Return the row and column forward differences as k × k correlation filters, shape (2, k, k).

    Applied by :func:`periodic_filter` they give :func:`unrolled.tv.finite_difference` with the
    periodic boundary: :math:`x_{i+1,j} - x_{ij}` and :math:`x_{i,j+1} - x_{ij}`.
    """
    # The filters need a tap below and right of the centre k // 2.
    if filter_size < 3:
        raise ValueError(f"finite-difference filters need filter_size >= 3, got {filter_size}.")
    centre = filter_size // 2
    filters = torch.zeros(2, filter_size, filter_size, dtype=dtype)
    filters[:, centre, centre] = -1.0
    filters[0, centre + 1, centre] = 1.0
    filters[1, centre, centre + 1] = 1.0
    return filters


def filter_transfer(filters: Tensor, shape: tuple[int, int]) -> Tensor:
    r"""Return the DFT-domain transfer functions of periodic correlations with ``filters``, shape (L, H, W).

    The correlation :math:`(Hx)_{ij} = \sum_{a,b} h_{ab}\,x_{i + a - c,\, j + b - c}` (indices modulo
    the image size, c = k // 2, the convention of ``torch.nn.functional.conv2d``) is
    :math:`\mathcal F^{-1}(\hat T \cdot \mathcal F x)` with :math:`\hat T = \overline{\mathcal F(h_{\text{embedded}})}`,
    where the embedding puts :math:`h_{ab}` at :math:`((a - c) \bmod H, (b - c) \bmod W)`.
    """
    height, width = shape
    size = filters.shape[-1]
    if height < size or width < size:
        raise ValueError(f"images of shape {tuple(shape)} are smaller than the {size} x {size} filters.")
    centre = size // 2
    embedded = nn.functional.pad(filters, (0, width - size, 0, height - size))
    embedded = torch.roll(embedded, shifts=(-centre, -centre), dims=(-2, -1))
    return torch.fft.fft2(embedded).conj()


def periodic_filter(x: Tensor, transfer: Tensor) -> Tensor:
    """Apply the L periodic filters with DFT transfer functions ``transfer`` (L, H, W) to ``x`` (..., H, W); returns (..., L, H, W)."""
    filtered = torch.fft.ifft2(transfer * torch.fft.fft2(x).unsqueeze(-3))
    return filtered if torch.is_complex(x) else filtered.real


def periodic_filter_adjoint(responses: Tensor, transfer: Tensor) -> Tensor:
    """Apply the adjoint :math:`\\sum_l H_l^H` to filter responses (..., L, H, W); returns (..., H, W)."""
    image = torch.fft.ifft2((transfer.conj() * torch.fft.fft2(responses)).sum(-3))
    return image if torch.is_complex(responses) else image.real


def piecewise_linear(x: Tensor, values: Tensor, start: float, stop: float) -> Tensor:
    r"""Evaluate, per filter, the piecewise-linear function through the control points :math:`(p_i, q_i)`.

    The N points :math:`p_i` are equally spaced from ``start`` to ``stop``, and ``values`` (L, N)
    contains each filter's :math:`q_i`. Between :math:`p_1` and :math:`p_N` the function interpolates
    linearly. Outside it continues with slope 1: :math:`x - p_1 + q_1` below and :math:`x - p_N + q_N`
    above, as soft-thresholding does.

    Args:
        x: real input of shape (..., L, H, W); filter l uses ``values[l]``.
        values: control values of shape (L, N), N >= 2.
        start: :math:`p_1`.
        stop: :math:`p_N > p_1`.
    """
    n_filters, n_points = values.shape
    spacing = (stop - start) / (n_points - 1)
    position = (x - start) / spacing
    index = position.detach().floor().clamp(0, n_points - 2).long()
    fraction = position - index

    # Flat indices into values: filter l's row starts at l · N.
    row = (torch.arange(n_filters, device=x.device) * n_points).view(n_filters, 1, 1)
    left = torch.take(values, index + row)
    right = torch.take(values, index + row + 1)
    inside = left + fraction * (right - left)

    below = x - start + values[:, 0].view(n_filters, 1, 1)
    above = x - stop + values[:, -1].view(n_filters, 1, 1)
    return torch.where(x < start, below, torch.where(x > stop, above, inside))


def apply_plf(w: Tensor, values: Tensor, start: float, stop: float) -> Tensor:
    """Apply :func:`piecewise_linear` to real ``w``, or to the modulus of complex ``w`` keeping its phase.

    The complex form equals complex soft-thresholding (:func:`unrolled.prox.prox_l1`) when the
    function is a soft-threshold; where the modulus is 0 the output is 0.
    """
    if not torch.is_complex(w):
        return piecewise_linear(w, values, start, stop)
    modulus = w.abs()
    safe_modulus = torch.where(modulus > 0, modulus, torch.ones_like(modulus))
    scale = torch.where(modulus > 0, piecewise_linear(modulus, values, start, stop) / safe_modulus, torch.zeros_like(modulus))
    return w * scale


class ADMMNet(nn.Module):
    r"""ADMM-Net with ``n_layers`` untied stages (module docstring), for any image operator passed at call time.

    Args:
        n_layers: number of stages, >= 1.
        n_filters: filters L per stage. With ``filter_init="dct"`` at most ``filter_size² − 1``;
            the default 8 with 3 × 3 filters is the whole DCT basis without its DC filter.
        filter_size: k, the side of the square filters.
        n_control_points: N, control points of each piecewise-linear function, >= 2.
        plf_range: the control points are equally spaced in [−plf_range, plf_range]; with 101
            points over [−1, 1] they lie 0.02 apart. Responses outside continue with slope 1.
        rho_init: initial penalty :math:`\rho_l` of every filter, > 0.
        threshold_init: the piecewise-linear functions start as soft-thresholding at this value
            (exactly so where the kinks ±threshold_init fall on control points).
        dual_step_init: initial :math:`\eta_l`; 1 is classical ADMM.
        filter_init: ``"dct"`` (2-D DCT basis without DC) or ``"finite_difference"`` (the two
            periodic differences of TV, needs ``n_filters = 2``).
        cg_steps: conjugate-gradient steps of the x-update for operators without an exact solve.
        dtype: dtype of the parameters; the forward pass runs in it.

    Attributes:
        log_rho: (n_layers, L), :math:`\log\rho_l`, so that :math:`\rho_l = e^{\text{log\_rho}} > 0`.
        filters: (n_layers, L, k, k).
        plf_values: (n_layers, L, N), the control values :math:`q_l`.
        dual_step: (n_layers, L), :math:`\eta_l`.
    """

    def __init__(
        self,
        n_layers: int,
        n_filters: int = 8,
        filter_size: int = 3,
        n_control_points: int = 101,
        plf_range: float = 1.0,
        rho_init: float = 0.1,
        threshold_init: float = 0.02,
        dual_step_init: float = 1.0,
        filter_init: str = "dct",
        cg_steps: int = 10,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        _check_positive_int("n_layers", n_layers, 1)
        _check_positive_int("n_filters", n_filters, 1)
        _check_positive_int("filter_size", filter_size, 1)
        _check_positive_int("n_control_points", n_control_points, 2)
        _check_positive_int("cg_steps", cg_steps, 1)
        if not (math.isfinite(plf_range) and plf_range > 0):
            raise ValueError(f"plf_range must be a positive finite number, got {plf_range!r}.")
        if not (math.isfinite(rho_init) and rho_init > 0):
            raise ValueError(f"rho_init must be a positive finite number, got {rho_init!r}.")
        if not (math.isfinite(threshold_init) and threshold_init >= 0):
            raise ValueError(f"threshold_init must be a finite number >= 0, got {threshold_init!r}.")
        if filter_init not in FILTER_INITS:
            raise ValueError(f"filter_init must be one of {FILTER_INITS}, got {filter_init!r}.")
        if filter_init == "finite_difference" and n_filters != 2:
            raise ValueError(f"filter_init='finite_difference' gives 2 filters, so n_filters must be 2, got {n_filters}.")

        self.n_layers = n_layers
        self.n_filters = n_filters
        self.filter_size = filter_size
        self.plf_range = float(plf_range)
        self.cg_steps = cg_steps

        initial_filters = dct_filters(filter_size, n_filters) if filter_init == "dct" else finite_difference_filters(filter_size)
        control_points = torch.linspace(-plf_range, plf_range, n_control_points, dtype=torch.float64)
        soft_threshold = torch.sign(control_points) * torch.relu(control_points.abs() - threshold_init)

        self.log_rho = nn.Parameter(torch.full((n_layers, n_filters), math.log(rho_init), dtype=dtype))
        self.filters = nn.Parameter(initial_filters.to(dtype).expand(n_layers, -1, -1, -1).clone())
        self.plf_values = nn.Parameter(soft_threshold.to(dtype).expand(n_layers, n_filters, -1).clone())
        self.dual_step = nn.Parameter(torch.full((n_layers, n_filters), float(dual_step_init), dtype=dtype))

    def per_layer_parameters(self) -> dict[str, int]:
        """Parameters stored per stage, each mapped to the stage of its first entry (all of them, from stage 0)."""
        return {name: 0 for name, _ in self.named_parameters()}

    def forward(
        self, y: Tensor, operator: LinearOperator, noise_std: float | Tensor | None = None, all_stages: bool = False
    ) -> Tensor | list[Tensor]:
        """Reconstruct images from measurements ``y`` of shape (..., *operator.out_shape).

        Args:
            y: measurements; the leading dimensions are a batch.
            operator: the forward operator A; its ``in_shape`` must be (H, W).
            noise_std: accepted for a common interface with other reconstruction networks and ignored.
            all_stages: return the estimate of every stage instead of only the last.

        Returns:
            The estimate of shape (..., H, W), complex for complex-domain operators, or the list of
            the ``n_layers`` stage estimates when ``all_stages``.
        """
        operator.check_measurements(y)
        if len(operator.in_shape) != 2:
            raise ValueError(f"ADMMNet reconstructs images, so operator.in_shape must be (H, W), got {operator.in_shape}.")
        if isinstance(operator, MaskedFourier) and operator.complex_domain and not operator.samples_zero_frequency:
            raise ValueError(
                "the k-space mask does not sample the zero frequency (mask[0, 0] = 0), where every zero-mean filter's "
                "spectrum is 0 too, so the exact x-update is singular; sample the centre of k-space."
            )
        real_dtype = self.log_rho.dtype
        y = y.to(_complex_dtype(real_dtype) if torch.is_complex(y) else real_dtype)

        data_back = operator.adjoint(y)
        x = torch.zeros_like(data_back)
        responses = x.new_zeros((*x.shape[:-2], self.n_filters, *x.shape[-2:]))
        z, u = (responses,), (responses,)

        estimates = []
        for stage in range(self.n_layers):
            iterate = self._stage(stage, x, z, u, data_back, operator)
            x, z, u = iterate.x, iterate.z, iterate.u
            estimates.append(x)
        return estimates if all_stages else x

    def _stage(self, stage: int, x: Tensor, z: tuple[Tensor], u: tuple[Tensor], data_back: Tensor, operator: LinearOperator) -> ADMMIterate:
        transfer = filter_transfer(self.filters[stage], operator.in_shape)
        rho = self.log_rho[stage].exp().view(-1, 1, 1)
        values = self.plf_values[stage]

        def x_update(v: tuple[Tensor, ...], x_warm: Tensor) -> Tensor:
            rhs = data_back + periodic_filter_adjoint(rho * v[0], transfer)
            if isinstance(operator, MaskedFourier) and operator.complex_domain:
                spectrum = (rho * transfer.abs().square()).sum(0)
                return operator.solve_normal(rhs, 1.0, spectrum)

            def normal(w: Tensor) -> Tensor:
                return operator.normal(w) + periodic_filter_adjoint(rho * periodic_filter(w, transfer), transfer)

            return conjugate_gradient(normal, rhs, x0=x_warm, max_iter=self.cg_steps, tol=0.0, vector_dims=2)

        return admm_step(
            x, z, u,
            x_update=x_update,
            transform=lambda image: (periodic_filter(image, transfer),),
            prox=lambda w: (apply_plf(w[0], values, -self.plf_range, self.plf_range),),
            dual_step=self.dual_step[stage].view(-1, 1, 1),
        )


def _complex_dtype(real_dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if real_dtype == torch.float64 else torch.complex64


def _check_positive_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
