r"""Hypergradients :math:`h \mapsto \mathrm dF(z^*(h), h)/\mathrm dh` of a :class:`~unrolled.bilevel.problems.BilevelProblem`.

Two families of methods return the same result type, :class:`Hypergradient`.

**Reverse mode through K inner iterations** (:func:`unrolled_hypergradient`; Domke, 2012; Maclaurin
et al., 2015). K proximal-gradient steps
:math:`z_{k+1} = \operatorname{prox}_{\gamma\lambda(h)\|\cdot\|_1}(z_k - \gamma\nabla_z G(z_k, h))`
solve the inner problem, and the outer loss at :math:`z_K` is back-propagated to h. The result is the
exact gradient of the K-step approximation. It costs K forward steps and K backward steps. It
stores the K iterates and what each step saves, so its memory grows linearly with K. Two options
reduce that memory:

- ``truncate=T`` back-propagates through the last T steps only (Shaban et al., 2019). Memory is
  ∝ T, but the result is biased.
- ``checkpoint_every=c`` stores one iterate every c steps and recomputes the others during the
  backward pass (Griewank & Walther, 2000). Memory is ∝ K/c + c, for about one extra forward pass
  of time.

**Implicit differentiation** (:func:`implicit_hypergradient`; Bengio, 2000; Pedregosa, 2016). At an
inner solution :math:`\nabla_z G(z^*, h) = 0`, so

.. math::
    \frac{\mathrm dF}{\mathrm dh} = \nabla_h F - \nabla^2_{hz}G\,v,\qquad \nabla^2_{zz}G\,v = \nabla_z F.

Conjugate gradient or a Neumann series (:mod:`~unrolled.bilevel.linear_systems`) solves the linear
system to a relative tolerance, through Hessian-vector products. The cost is one inner solve plus a
few tens of products. It stores a handful of vectors, whatever the number of inner iterations.

With an ℓ1 inner term, the solution is differentiable where its support S and signs are locally
constant (Bertrand et al., 2020). The system is then restricted to S, the ℓ1 term adds
:math:`\partial_h\lambda(h)\,\operatorname{sign}(z_S)` to the cross derivative, and
:math:`\mathrm dz/\mathrm dh = 0` off S. Over all coordinates, the system is singular whenever the
smooth part is not strongly convex, as with more features than samples, and its solution is
meaningless. ``restrict_to_support=False`` is kept to show this.

The error of an implicit hypergradient is bounded by a constant times the inner residual plus the
linear-system residual (Pedregosa, 2016, Theorem 1). Both residuals are therefore reported and
checked. A residual above its tolerance emits an :class:`ApproximateHypergradientWarning` that names
it, and the result is flagged ``approximate``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from unrolled.bilevel.linear_systems import LinearSolve, conjugate_gradient, neumann_series
from unrolled.bilevel.problems import BilevelProblem
from unrolled.prox import prox_l1


LINEAR_SOLVERS = ("cg", "neumann", "direct")
# Maximum number of unknowns for the dense solver, which builds H column by column.
# Larger systems need an iterative solver.
MAX_DIRECT_DIM = 5000


class ApproximateHypergradientWarning(UserWarning):
    """Warning that an inner solve or a linear system stopped above its tolerance, so the hypergradient is approximate."""


@dataclass(frozen=True)
class Hypergradient:
    """Hypergradient and how it was obtained.

    Attributes:
        value: the outer objective F at the inner point used.
        gradient: :math:`\\mathrm dF/\\mathrm dh`, shaped like h.
        method: ``implicit-cg``, ``implicit-neumann``, ``implicit-direct``, ``unrolled``,
            ``truncated`` or ``unrolled-checkpointed``.
        approximate: True when a residual was above its tolerance, or for truncated back-propagation.
        inner_residual: optimality residual of the inner point (:meth:`~unrolled.bilevel.problems.BilevelProblem.inner_residual`).
        linear_residual: relative residual of the linear system (implicit methods), else None.
        n_products: Hessian-vector products (implicit) or inner iterations (reverse mode).
        z: the inner point, detached.
        adjoint: the solution v of the linear system (implicit methods), to warm-start the next
            call, else None.
    """

    value: float
    gradient: Tensor
    method: str
    approximate: bool
    inner_residual: float
    linear_residual: float | None
    n_products: int
    z: Tensor
    adjoint: Tensor | None = None


def implicit_hypergradient(
    problem: BilevelProblem,
    hyper: Tensor,
    z: Tensor | None = None,
    *,
    solver: str = "cg",
    tol: float = 1e-10,
    max_iter: int = 1000,
    inner_tol: float = 1e-9,
    inner_max_iter: int = 100,
    restrict_to_support: bool = True,
    adjoint0: Tensor | None = None,
) -> Hypergradient:
    r"""Compute the hypergradient by implicit differentiation at an inner solution (see the module docstring).

    Args:
        problem: the bilevel problem.
        hyper: hyperparameters h (1-D).
        z: an inner solution, or None to solve for one here to ``inner_tol``.
        solver: ``cg`` (conjugate gradient), ``neumann`` (Neumann series with step 1/L at h) or
            ``direct``. The direct solver builds the dense H from one product per unknown and solves
            it without Cholesky (``torch.linalg.solve``). It accepts at most ``MAX_DIRECT_DIM``
            unknowns.
        tol: relative residual at which the linear system counts as solved.
        max_iter: maximum number of Hessian-vector products of the iterative solvers.
        inner_tol: inner residual above which the result is flagged approximate. It is also the
            tolerance of the inner solve when z is None.
        inner_max_iter: maximum number of Newton steps of the inner solve when z is None.
        restrict_to_support: with an ℓ1 inner term, solve on the support of z only, which is the
            correct system. False solves over all coordinates and warns.
        adjoint0: starting point of conjugate gradient, typically the previous call's ``adjoint``.
    """
    if solver not in LINEAR_SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(LINEAR_SOLVERS)}, got {solver!r}.")
    hyper = _as_hyperparameters(problem, hyper)
    if z is None:
        z = problem.solve_inner(hyper, tol=inner_tol, max_iter=inner_max_iter).z
        advice = f"Raise inner_max_iter (now {inner_max_iter}) or loosen inner_tol."
    else:
        _check_inner_shape(problem, z, "z")
        advice = "Solve the inner problem further before passing z, or pass z=None to solve it here."
    z = z.detach()
    inner_residual = problem.inner_residual(z, hyper)
    approximate = _check_residual("inner point", inner_residual, inner_tol, advice)

    l1 = problem.inner_l1(hyper)
    support = None
    if l1 is not None:
        if restrict_to_support:
            support = (z != 0).to(z.dtype)
        else:
            warnings.warn(
                "restrict_to_support=False with an ℓ1 inner term: the linear system uses the Hessian of the smooth part "
                "over all coordinates, which is singular unless that part is strongly convex, so expect meaningless values. "
                "Pass restrict_to_support=True for the correct system.",
                stacklevel=2,
            )

    hessian = problem.inner_hvp_operator(z, hyper)

    def matvec(v: Tensor) -> Tensor:
        if support is None:
            return hessian(v)
        # Use the identity off the support. The right-hand side is 0 there, so v stays 0 and H stays invertible.
        return hessian(v * support) * support + v * (1 - support)

    grad_z, grad_h = problem.outer_gradients(z, hyper)
    rhs = grad_z if support is None else grad_z * support
    if solver == "cg":
        linear = conjugate_gradient(matvec, rhs, tol=tol, max_iter=max_iter, x0=adjoint0)
    elif solver == "neumann":
        linear = neumann_series(matvec, rhs, step_size=1.0 / problem.inner_lipschitz(hyper), tol=tol, max_iter=max_iter)
    else:
        linear = _direct_solve(matvec, rhs)
    approximate |= _check_residual("linear system", linear.residual, tol, f"Raise max_iter (now {max_iter}) or loosen tol.")

    v = linear.solution
    cross = problem.inner_cross(z, hyper, v)
    if l1 is not None:
        # On the support the ℓ1 term is λ(h)·Σ sign(z_i) z_i, whose cross derivative is ∂_h λ · ⟨sign(z), v⟩.
        with torch.enable_grad():
            hyper_ = hyper.requires_grad_(True)
            weighted = (problem.inner_l1(hyper_) * torch.sign(z) * v).sum()
            (l1_cross,) = torch.autograd.grad(weighted, hyper_, allow_unused=True)
        hyper = hyper.detach()
        if l1_cross is not None:
            cross = cross + l1_cross
    with torch.no_grad():
        value = float(problem.outer(z, hyper))
    return Hypergradient(
        value=value,
        gradient=grad_h - cross,
        method=f"implicit-{solver}",
        approximate=approximate,
        inner_residual=inner_residual,
        linear_residual=linear.residual,
        n_products=linear.n_iter,
        z=z,
        adjoint=v,
    )


def unrolled_hypergradient(
    problem: BilevelProblem,
    hyper: Tensor,
    z0: Tensor | None = None,
    *,
    max_iter: int,
    step_size: float | None = None,
    truncate: int | None = None,
    checkpoint_every: int | None = None,
    inner_tol: float | None = 1e-6,
) -> Hypergradient:
    r"""Compute the hypergradient by reverse-mode differentiation through ``max_iter`` proximal-gradient steps.

    Args:
        problem: the bilevel problem.
        hyper: hyperparameters h (1-D).
        z0: starting point, or the problem's ``initial_inner()`` when None.
        max_iter: K, the number of inner steps.
        step_size: γ in (0, 2/L], or 1/L at h when None. It is held constant in the differentiation.
        truncate: T. Back-propagate through the last T steps only, and run the first K − T steps
            without a graph. When T < K, the result is flagged approximate.
        checkpoint_every: c. Store the iterate every c steps and recompute the steps in between
            during the backward pass.
        inner_tol: warn and flag the result approximate when the residual of the last iterate is
            above it, because the result is then the gradient of the K-step approximation rather
            than of the bilevel problem. None skips the check.
    """
    hyper = _as_hyperparameters(problem, hyper)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
    if truncate is not None and not 1 <= truncate <= max_iter:
        raise ValueError(f"truncate must lie in 1..max_iter ({max_iter}), got {truncate}.")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
    lipschitz = problem.inner_lipschitz(hyper)
    step = 1.0 / lipschitz if step_size is None else float(step_size)
    if not 0 < step <= 2 / lipschitz:
        raise ValueError(
            f"step_size must lie in (0, 2/L] = (0, {2 / lipschitz:.4g}] for the inner iterations to converge, got {step_size}. "
            "Leave it None for 1/L."
        )
    tracked = max_iter if truncate is None else truncate

    if z0 is not None:
        _check_inner_shape(problem, z0, "z0")
    z = problem.initial_inner() if z0 is None else z0.detach().clone()
    with torch.no_grad():
        for _ in range(max_iter - tracked):
            z = _proximal_gradient_step(problem, z, hyper, step)

    hyper_ = hyper.clone().requires_grad_(True)
    with torch.enable_grad():
        if checkpoint_every is None:
            z = _proximal_gradient_steps(problem, z, hyper_, step, tracked)
        else:
            done = 0
            while done < tracked:
                count = min(checkpoint_every, tracked - done)
                # The reentrant form recomputes each segment as an ordinary forward pass inside the backward
                # pass. Its saved tensors are therefore visible to saved-tensor hooks, so SavedTensorMemory counts them.
                z = checkpoint(_proximal_gradient_steps, problem, z, hyper_, step, count, use_reentrant=True)
                done += count
        value = problem.outer(z, hyper_)
        # Use backward() rather than autograd.grad, because reentrant checkpointing supports only backward().
        value.backward()
        gradient = hyper_.grad

    z = z.detach()
    inner_residual = problem.inner_residual(z, hyper)
    approximate = truncate is not None and truncate < max_iter
    if inner_tol is not None:
        advice = f"Raise max_iter (now {max_iter}), or use implicit_hypergradient at a solved inner point."
        approximate |= _check_residual("last inner iterate", inner_residual, inner_tol, advice)
    if truncate is not None and truncate < max_iter:
        method = "truncated"
    else:
        method = "unrolled" if checkpoint_every is None else "unrolled-checkpointed"
    return Hypergradient(
        value=float(value.detach()),
        gradient=gradient,
        method=method,
        approximate=approximate,
        inner_residual=inner_residual,
        linear_residual=None,
        n_products=max_iter,
        z=z,
    )


def _proximal_gradient_step(problem: BilevelProblem, z: Tensor, hyper: Tensor, step: float) -> Tensor:
    r"""Take one step :math:`\operatorname{prox}_{\gamma\lambda(h)}(z - \gamma\nabla_z G(z, h))`, differentiable in z and h.

    Without an ℓ1 inner term, this is a plain gradient step.
    """
    z = z - step * problem.inner_gradient(z, hyper)
    l1 = problem.inner_l1(hyper)
    return z if l1 is None else prox_l1(z, step * l1)


def _proximal_gradient_steps(problem: BilevelProblem, z: Tensor, hyper: Tensor, step: float, count: int) -> Tensor:
    for _ in range(count):
        z = _proximal_gradient_step(problem, z, hyper, step)
    return z


def _direct_solve(matvec, rhs: Tensor) -> LinearSolve:
    """Build H column by column from products and solve it densely.

    ``torch.linalg.solve`` is used rather than ``torch.linalg.lstsq``, which would hide a singular H.
    """
    dim = rhs.numel()
    if dim > MAX_DIRECT_DIM:
        raise ValueError(
            f"solver='direct' would build a {dim} × {dim} matrix, but it accepts at most {MAX_DIRECT_DIM} unknowns. "
            "Use solver='cg'."
        )
    basis = torch.eye(dim, dtype=rhs.dtype, device=rhs.device)
    H = torch.stack([matvec(column.reshape(rhs.shape)).reshape(-1) for column in basis], dim=1)
    solution = torch.linalg.solve(H, rhs.reshape(-1))
    residual = float(torch.linalg.vector_norm(H @ solution - rhs.reshape(-1)) / torch.linalg.vector_norm(rhs).clamp_min(1e-300))
    return LinearSolve(solution.reshape(rhs.shape), residual, dim, True)


def _check_residual(solve_name: str, residual: float, tol: float, advice: str) -> bool:
    """Warn and return True when ``residual`` is above ``tol``. The warning names ``solve_name`` and gives ``advice``."""
    if residual <= tol:
        return False
    warnings.warn(
        f"the {solve_name} has residual {residual:.3g}, above its tolerance {tol:.3g}, so the hypergradient is approximate. {advice}",
        ApproximateHypergradientWarning,
        stacklevel=3,
    )
    return True


def _as_hyperparameters(problem: BilevelProblem, hyper) -> Tensor:
    """Return ``hyper`` as a detached tensor in the problem's dtype and device, after the problem's domain check."""
    reference = problem.initial_hyper()
    hyper = torch.as_tensor(hyper, dtype=reference.dtype, device=reference.device).detach()
    if hyper.ndim == 0 and reference.numel() == 1:  # A bare number for a problem with one hyperparameter.
        hyper = hyper.reshape(1)
    problem.check_hyper(hyper)
    return hyper


def _check_inner_shape(problem: BilevelProblem, z: Tensor, name: str) -> None:
    expected = tuple(problem.initial_inner().shape)
    if tuple(z.shape) != expected:
        raise ValueError(f"{name} must have the inner variable's shape {expected}, got {tuple(z.shape)}.")
