r"""Compiled CPU kernels (numba) that run one epoch's mini-batch draws of SGD, SVRG, SAGA and SARAH.

The update rule is written once, in torch: :func:`~unrolled.solvers.sgd.sgd_direction`,
:func:`~unrolled.solvers.svrg.svrg_direction`, :func:`~unrolled.solvers.saga.saga_direction`,
:func:`~unrolled.solvers.sarah.sarah_direction` and :func:`~unrolled.solvers.stochastic.proximal_step`,
which the unrolled layers share. The kernels here are a second implementation of the same
arithmetic, for speed. The torch backend spends a single-sample step mostly in Python and operator
dispatch: about 0.15 ms per step on breast cancer and 0.2 to 0.3 ms on MNIST (``bench.stochastic_vs_sklearn``
on a 2-core AMD EPYC). The kernels take the indices and weights that
:meth:`~unrolled.solvers.stochastic.Sampler.draw` has already drawn, and update the method's state
arrays in place, so the same seed gives the same iterates on both backends up to rounding.
``tests/unrolled/test_numba_kernels.py`` checks that for every method, loss, storage, batch size
and sampling, and is what keeps the two implementations equal.

Which torch code each kernel mirrors:

- :func:`sgd_draws`: ``sgd_direction`` then ``proximal_step`` at the step of ``_SGD.step_at``.
- :func:`svrg_draws`: ``svrg_direction`` then ``proximal_step``; with coins, ``_LooplessSVRG.step``
  (the kernel returns after a successful coin so that the caller takes the snapshot in torch).
- :func:`saga_draws`: ``saga_direction``, ``proximal_step``, then the table update of
  ``_SAGA.step``, where a sample drawn twice in one batch enters the table once.
- :func:`sarah_draws`: ``sarah_direction``, then ``proximal_step`` with the new estimate.

Sparse features (CSR) use lazy updates. Between two draws that touch feature r, row r of W
receives the same map at every step,

.. math:: w \leftarrow \operatorname{soft}_{\gamma_t\mathrm{reg}}\big(w - \gamma_t(c_r + \mathrm{reg\_l2}\,w)\big),

where :math:`c_r` is the dense part of the direction on that row: 0 for SGD, the snapshot gradient
for SVRG, SAGA's table mean :math:`\bar\alpha_r` and SARAH's previous estimate (both change only
on the rows of drawn samples). A row is brought up to date just before a draw reads it, and every
row at the end of a call. Without ℓ1 the composition is affine, and
:math:`w_e = P_{s,e}w_s - c_r\Gamma_{s,e}` with :math:`P_{s,e} = \prod_{t=s}^{e-1}a_t`,
:math:`a_t = 1 - \gamma_t\mathrm{reg\_l2}` and :math:`\Gamma_{s,e} = \sum_{t=s}^{e-1}\gamma_t P_{t+1,e}`,
both read from prefix arrays. With ℓ1 the iterate follows one affine branch per sign, changes
sign at most once, and the step where it leaves its branch is found by bisection on the same
prefix arrays. This reproduces the dense iterates up to rounding. scikit-learn's SAG and SAGA
solvers make the same "just-in-time" updates (``sklearn/linear_model/_sag_fast.pyx.tp``, version
1.9), but replay the missed steps one by one wherever their ℓ1 shortcut does not apply. When a
step has :math:`\gamma_t\mathrm{reg\_l2} \ge 1` the branches are no longer monotone, and the kernels
here replay the missed steps too.

The lazy updates pay off on sparse data only: a draw costs more bookkeeping per non-zero feature
than the dense kernel spends per feature. On MNIST (19 % non-zero pixels) SAGA with b = 1 ran
about 1.7 times slower per epoch from CSR storage than from dense storage, so keep such data dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from unrolled.problems.finite_sum import FiniteSum

# Codes of the losses and methods inside the kernels.
LOSS_CODES = {"squared": 0, "logistic": 1, "multinomial": 2}
SQUARED, LOGISTIC, MULTINOMIAL = 0, 1, 2
SGD, SVRG, SAGA, SARAH = 0, 1, 2, 3

# The prefix products of the lazy updates restart (after every row is brought up to date) when they
# fall below this value, long before they underflow.
RESCALE_BELOW = 1e-100


@dataclass(frozen=True)
class KernelProblem:
    """numpy arrays of a :class:`~unrolled.problems.finite_sum.FiniteSum` that the kernels read.

    Attributes:
        loss: code of the loss (``LOSS_CODES``).
        dense: features with the intercept column, shape (n, dim), or None for sparse features.
        indptr, indices, data: CSR storage of sparse features (empty arrays for dense features).
        targets: targets (n,) in the computation dtype.
        sample_weight: the weights :math:`\\hat s_i` (n,), rescaled to mean 1.
        penalty_mask: 1 on the penalised rows of W, 0 on the intercept row, shape (dim,).
        reg_l2, reg: the problem's ℓ2 and ℓ1 weights.
    """

    loss: int
    dense: np.ndarray | None
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    targets: np.ndarray
    sample_weight: np.ndarray
    penalty_mask: np.ndarray
    reg_l2: float
    reg: float

    @classmethod
    def from_problem(cls, problem: FiniteSum) -> KernelProblem:
        """Return the arrays of a CPU problem, converting sparse features to CSR."""
        if problem.device.type != "cpu":
            raise ValueError(f"the numba kernels run on CPU tensors, but the problem lives on {problem.device}.")
        empty_index = np.empty(0, dtype=np.int64)
        if problem.sparse:
            csr = problem.features.to_sparse_csr()
            dense = None
            indptr = csr.crow_indices().numpy().astype(np.int64)
            indices = csr.col_indices().numpy().astype(np.int64)
            data = np.ascontiguousarray(csr.values().numpy())
        else:
            dense = np.ascontiguousarray(problem.features.numpy())
            indptr, indices, data = empty_index, empty_index, np.empty(0, dtype=dense.dtype)
        return cls(
            loss=LOSS_CODES[problem.loss.name],
            dense=dense,
            indptr=indptr,
            indices=indices,
            data=data,
            targets=np.ascontiguousarray(problem.targets.numpy()),
            sample_weight=np.ascontiguousarray(problem.sample_weight.numpy()),
            penalty_mask=np.ascontiguousarray(problem.penalty_mask[:, 0].numpy()),
            reg_l2=problem.reg_l2,
            reg=problem.reg,
        )


def state_array(tensor: torch.Tensor) -> np.ndarray:
    """Return the numpy view of a state tensor that a kernel updates in place.

    Only a contiguous tensor gives a view that shares its memory, so any other raises ``ValueError``.
    """
    if not tensor.is_contiguous():
        raise ValueError("a kernel state tensor must be contiguous, otherwise the kernel would update a copy.")
    return tensor.numpy()


def sgd_draws(problem: KernelProblem, W: np.ndarray, index: np.ndarray, weights: np.ndarray, step_sizes: np.ndarray) -> None:
    """Apply the proximal SGD steps of the draws ``index`` (n_iter, b) with weights (n_iter, b) and one step size per draw, in place on W.

    Mirrors ``sgd_direction`` and ``proximal_step``.
    """
    empty = np.empty((0, W.shape[1]), dtype=W.dtype)
    _run(problem, SGD, W, empty, np.zeros_like(W), empty, index, weights, step_sizes, np.empty(0), 0.0)


def svrg_draws(
    problem: KernelProblem,
    W: np.ndarray,
    snapshot: np.ndarray,
    snapshot_gradient: np.ndarray,
    index: np.ndarray,
    weights: np.ndarray,
    step_size: float,
    coins: np.ndarray | None = None,
    snapshot_probability: float = 0.0,
) -> int:
    """Apply proximal SVRG steps in place on W and return the number of draws applied.

    Mirrors ``svrg_direction`` and ``proximal_step``. ``coins`` contains one uniform value per draw,
    as L-SVRG's coin generator yields them. With coins, the kernel returns right after the first
    draw whose coin is below ``snapshot_probability``, so that the caller can take the snapshot
    that ``_LooplessSVRG.step`` takes there. Without coins it applies every draw.
    """
    coins = np.empty(0) if coins is None else np.ascontiguousarray(coins, dtype=np.float64)
    step_sizes = np.full(index.shape[0], step_size)
    return _run(problem, SVRG, W, snapshot, snapshot_gradient, np.empty((0, W.shape[1]), dtype=W.dtype),
                index, weights, step_sizes, coins, snapshot_probability)


def saga_draws(
    problem: KernelProblem,
    W: np.ndarray,
    table: np.ndarray,
    table_mean: np.ndarray,
    index: np.ndarray,
    weights: np.ndarray,
    step_size: float,
) -> None:
    """Apply proximal SAGA steps in place on W, on the derivative table (n, k) and on its mean (dim, k).

    Mirrors ``saga_direction``, ``proximal_step`` and the table update of ``_SAGA.step``.
    """
    step_sizes = np.full(index.shape[0], step_size)
    _run(problem, SAGA, W, np.empty((0, W.shape[1]), dtype=W.dtype), table_mean, table, index, weights, step_sizes, np.empty(0), 0.0)


def sarah_draws(
    problem: KernelProblem,
    W: np.ndarray,
    W_previous: np.ndarray,
    previous: np.ndarray,
    index: np.ndarray,
    weights: np.ndarray,
    step_size: float,
) -> None:
    """Apply proximal SARAH steps in place on W, the previous iterate and the previous estimate.

    Mirrors ``sarah_direction`` and ``proximal_step``. On return ``W_previous`` and ``previous``
    hold the iterate before the last step and the estimate that step used, as in ``_SARAH``.
    """
    step_sizes = np.full(index.shape[0], step_size)
    _run(problem, SARAH, W, W_previous, previous, np.empty((0, W.shape[1]), dtype=W.dtype), index, weights, step_sizes, np.empty(0), 0.0)


def _run(problem: KernelProblem, method: int, W, reference, constant, table, index, weights, step_sizes, coins, snapshot_probability) -> int:
    """Call the dense or the sparse kernel with the problem's arrays."""
    common = (problem.targets, problem.sample_weight, problem.penalty_mask, problem.reg_l2, problem.reg,
              W, reference, constant, table, index, weights, step_sizes, coins, snapshot_probability)
    if problem.dense is not None:
        return _dense_draws(method, problem.loss, problem.dense, *common)
    return _sparse_draws(method, problem.loss, problem.indptr, problem.indices, problem.data, *common)


@njit(cache=True)
def _derivative(loss, margins, target, weight, out):
    """Write :math:`\\hat s\\,\\partial\\psi/\\partial z` of one sample into ``out`` (k,), as ``FiniteSum.derivatives`` computes it."""
    if loss == SQUARED:
        out[0] = weight * (margins[0] - target)
    elif loss == LOGISTIC:
        # -y sigmoid(-y z) of LogisticLoss.derivative. For large y z, exp overflows to inf and the value is 0.
        out[0] = weight * (-target / (1.0 + np.exp(target * margins[0])))
    else:
        # Softmax after subtracting the largest margin, as torch.softmax does, minus 1 at the label.
        largest = margins.max()
        total = 0.0
        for c in range(margins.shape[0]):
            out[c] = np.exp(margins[c] - largest)
            total += out[c]
        for c in range(margins.shape[0]):
            out[c] = out[c] / total
        out[int(target)] -= 1.0
        for c in range(margins.shape[0]):
            out[c] = weight * out[c]


@njit(cache=True)
def _proximal_update(w, direction, step_size, l2, threshold):
    """Return one entry of ``proximal_step``: soft-threshold w - step_size (direction + l2 w) at ``threshold``.

    ``l2`` is reg_l2 times the row's penalty mask and ``threshold`` is step_size · reg · mask, as in torch.
    """
    value = w - step_size * (direction + l2 * w)
    if threshold > 0.0:
        if value > threshold:
            return value - threshold
        if value < -threshold:
            return value + threshold
        return 0.0
    return value


@njit(cache=True)
def _branch_value(w, drift, start, end, scale, weighted):
    """Return the affine branch w ← a_t w − γ_t drift after steps start..end−1, from the prefix arrays."""
    return scale[end] / scale[start] * w - drift * scale[end] * (weighted[end] - weighted[start])


@njit(cache=True)
def _lazy_entry(w, constant, start, end, step_sizes, reg_l2, reg, scale, weighted):
    """Return one entry of a penalised row after steps start..end−1 of the map of the module docstring, in closed form.

    Without ℓ1 the map is affine. With ℓ1, a positive entry follows w ← a w − γ(c + reg) while that
    stays positive (a negative one w ← a w − γ(c − reg)), and the branch moves monotonically
    towards 0 or away from it. Once the branch value is no longer of the entry's sign, the
    step that leaves the branch is found by bisection and applied exactly. From there the entry
    is 0 for good when |c| <= reg, and otherwise follows the branch of sign −sign(c) for good.
    """
    while start < end:
        if reg == 0.0:
            return _branch_value(w, constant, start, end, scale, weighted)
        if w == 0.0:
            if abs(constant) <= reg:
                return 0.0
            side = -1.0 if constant > 0.0 else 1.0
            return _branch_value(0.0, constant + side * reg, start, end, scale, weighted)
        side = 1.0 if w > 0.0 else -1.0
        drift = constant + side * reg
        if side * _branch_value(w, drift, start, end, scale, weighted) > 0.0:
            return _branch_value(w, drift, start, end, scale, weighted)
        # Bisection for the first position whose branch value has left the entry's side.
        low, high = start + 1, end
        while low < high:
            middle = (low + high) // 2
            if side * _branch_value(w, drift, start, middle, scale, weighted) <= 0.0:
                high = middle
            else:
                low = middle + 1
        last_on_branch = _branch_value(w, drift, start, low - 1, scale, weighted)
        step_size = step_sizes[low - 1]
        w = _proximal_update(last_on_branch, constant, step_size, reg_l2, step_size * reg)
        start = low
    return w


@njit(cache=True)
def _catch_up(W, row, start, end, constant, penalised, reg_l2, reg, step_sizes, scale, weighted, step_total, closed_form):
    """Apply steps start..end−1 to row ``row`` of W, whose direction is ``constant[row]`` at each of them."""
    if start >= end:
        return
    k = W.shape[1]
    if not penalised:
        # No ℓ2 and no ℓ1 on the intercept: every step subtracts γ_t · constant.
        total = step_total[end] - step_total[start]
        for c in range(k):
            W[row, c] -= constant[row, c] * total
    elif not closed_form:
        for c in range(k):
            w = W[row, c]
            for t in range(start, end):
                w = _proximal_update(w, constant[row, c], step_sizes[t], reg_l2, step_sizes[t] * reg)
            W[row, c] = w
    elif reg == 0.0:
        # Affine: w_end = P w_start - constant Γ, with P and Γ shared by the whole row.
        decay = scale[end] / scale[start]
        gain = scale[end] * (weighted[end] - weighted[start])
        for c in range(k):
            W[row, c] = decay * W[row, c] - constant[row, c] * gain
    else:
        for c in range(k):
            W[row, c] = _lazy_entry(W[row, c], constant[row, c], start, end, step_sizes, reg_l2, reg, scale, weighted)


@njit(cache=True)
def _bring_up_to_date(row, end, lazy, W, previous, constant, mask, reg_l2, reg, step_sizes, closed_form, track_previous):
    """Bring row ``row`` of W to iteration ``end``. With ``track_previous`` (SARAH), also store its value at end − 1 in ``previous``."""
    last, scale, weighted, step_total = lazy
    start = last[row]
    if start >= end:
        return
    penalised = mask[row] != 0.0
    if track_previous:
        _catch_up(W, row, start, end - 1, constant, penalised, reg_l2, reg, step_sizes, scale, weighted, step_total, closed_form)
        previous[row, :] = W[row, :]
        _catch_up(W, row, end - 1, end, constant, penalised, reg_l2, reg, step_sizes, scale, weighted, step_total, closed_form)
    else:
        _catch_up(W, row, start, end, constant, penalised, reg_l2, reg, step_sizes, scale, weighted, step_total, closed_form)
    last[row] = end


@njit(cache=True)
def _dense_margins(X, sample, W, margins):
    """Write the margins :math:`\\tilde x_i^\\top W` of one dense sample into ``margins`` (k,)."""
    if W.shape[1] == 1:
        # One margin: a plain dot product, without the loop over outputs, whose overhead dominates when k = 1.
        total = 0.0
        for r in range(W.shape[0]):
            total += X[sample, r] * W[r, 0]
        margins[0] = total
        return
    for c in range(W.shape[1]):
        margins[c] = 0.0
    for r in range(W.shape[0]):
        x = X[sample, r]
        if x != 0.0:
            for c in range(W.shape[1]):
                margins[c] += x * W[r, c]


@njit(cache=True)
def _sparse_margins(indptr, indices, data, sample, W, margins):
    """Write the margins of one CSR sample into ``margins`` (k,)."""
    margins[:] = 0.0
    for p in range(indptr[sample], indptr[sample + 1]):
        r = indices[p]
        for c in range(W.shape[1]):
            margins[c] += data[p] * W[r, c]


@njit(cache=True)
def _add_outer(X, sample, vector, out):
    """Add the outer product of the dense sample's features with ``vector`` (k,) to ``out`` (dim, k), skipping zero features."""
    for r in range(out.shape[0]):
        x = X[sample, r]
        if x != 0.0:
            for c in range(out.shape[1]):
                out[r, c] += x * vector[c]


@njit(cache=True)
def _dense_draws(method, loss, X, targets, sample_weight, mask, reg_l2, reg, W, reference, constant, table,
                 index, weights, step_sizes, coins, snapshot_probability):
    """Run the draws of ``method`` on dense features and return the number of draws applied.

    ``reference`` is SVRG's snapshot or SARAH's previous iterate, whose derivatives are subtracted.
    ``constant`` is the dense part of the direction: SVRG's snapshot gradient, SAGA's table mean,
    SARAH's previous estimate (which the kernel overwrites with the new one), zeros for SGD.
    ``table`` is SAGA's derivative table. Arrays a method does not use are empty.
    """
    n_iter, b = index.shape
    n = targets.shape[0]
    dim, k = W.shape
    margins = np.empty(k, dtype=W.dtype)
    current = np.empty((b, k), dtype=W.dtype)
    subtracted = np.zeros((b, k), dtype=W.dtype)
    coefficients = np.empty((b, k), dtype=W.dtype)
    table_changes = np.zeros((b, k), dtype=W.dtype)
    direction = np.empty((dim, k), dtype=W.dtype)
    seen = np.full(n if method == SAGA else 0, -1, dtype=np.int64)

    for t in range(n_iter):
        step_size = step_sizes[t]
        # coefficients_j = (g_j - subtracted_j) / (n p_j) / b, so that rows.T @ coefficients is batch_gradient.
        for j in range(b):
            sample = index[t, j]
            _dense_margins(X, sample, W, margins)
            _derivative(loss, margins, targets[sample], sample_weight[sample], current[j])
            if method == SVRG or method == SARAH:
                _dense_margins(X, sample, reference, margins)
                _derivative(loss, margins, targets[sample], sample_weight[sample], subtracted[j])
            elif method == SAGA:
                for c in range(k):
                    subtracted[j, c] = table[sample, c]
            for c in range(k):
                coefficients[j, c] = (current[j, c] - subtracted[j, c]) * weights[t, j] / b
        if method == SAGA:
            # (g_j - alpha_j) / n enters the table mean once per distinct sample of the batch.
            for j in range(b):
                sample = index[t, j]
                first = seen[sample] != t
                seen[sample] = t
                for c in range(k):
                    table_changes[j, c] = (current[j, c] - subtracted[j, c]) / n if first else 0.0

        if b == 1 and k == 1 and reg == 0.0 and method != SARAH:
            # The pass below for one output and no ℓ1 term, with nothing but arithmetic in the loop.
            # It halved the kernel time on breast cancer (bench.stochastic_vs_sklearn).
            sample = index[t, 0]
            coefficient = coefficients[0, 0]
            change = table_changes[0, 0]
            for r in range(dim):
                x = X[sample, r]
                w = W[r, 0]
                W[r, 0] = w - step_size * ((x * coefficient + constant[r, 0]) + reg_l2 * mask[r] * w)
                if method == SAGA:
                    constant[r, 0] += x * change
        elif b == 1:
            # One pass over the rows: the direction, proximal_step, then SAGA's table mean, which the
            # direction read before its update.
            sample = index[t, 0]
            for r in range(dim):
                l2 = reg_l2 * mask[r]
                threshold = step_size * reg * mask[r]
                x = X[sample, r]
                for c in range(k):
                    value = x * coefficients[0, c] + constant[r, c]
                    if method == SARAH:
                        constant[r, c] = value
                        reference[r, c] = W[r, c]
                    W[r, c] = _proximal_update(W[r, c], value, step_size, l2, threshold)
                    if method == SAGA:
                        constant[r, c] += x * table_changes[0, c]
        else:
            # A sample at a time, so that the innermost loop runs over contiguous rows of W.
            direction[:, :] = constant
            for j in range(b):
                _add_outer(X, index[t, j], coefficients[j], direction)
            for r in range(dim):
                l2 = reg_l2 * mask[r]
                threshold = step_size * reg * mask[r]
                for c in range(k):
                    if method == SARAH:
                        constant[r, c] = direction[r, c]
                        reference[r, c] = W[r, c]
                    W[r, c] = _proximal_update(W[r, c], direction[r, c], step_size, l2, threshold)
            if method == SAGA:
                for j in range(b):
                    _add_outer(X, index[t, j], table_changes[j], constant)

        if method == SAGA:
            for j in range(b):
                for c in range(k):
                    table[index[t, j], c] = current[j, c]

        if coins.shape[0] > 0 and coins[t] < snapshot_probability:
            return t + 1
    return n_iter


@njit(cache=True)
def _sparse_draws(method, loss, indptr, indices, data, targets, sample_weight, mask, reg_l2, reg, W, reference, constant, table,
                  index, weights, step_sizes, coins, snapshot_probability):
    """Run the draws of ``method`` on CSR features with the lazy updates of the module docstring.

    The arguments are those of :func:`_dense_draws`, with the features as ``indptr``, ``indices``
    and ``data``. For SARAH, ``reference`` (the previous iterate) is exact on the rows of the
    current draw and, on return, on every row.
    """
    n_iter, b = index.shape
    n = targets.shape[0]
    dim, k = W.shape
    track_previous = method == SARAH

    # The closed forms need a_t = 1 - γ_t reg_l2 > 0 at every step.
    closed_form = True
    for t in range(n_iter):
        if 1.0 - step_sizes[t] * reg_l2 <= 0.0:
            closed_form = False
    last = np.zeros(dim, dtype=np.int64)
    scale = np.ones(n_iter + 1)
    weighted = np.zeros(n_iter + 1)
    step_total = np.zeros(n_iter + 1)
    lazy = (last, scale, weighted, step_total)

    marked = np.full(dim, -1, dtype=np.int64)
    support = np.empty(dim, dtype=np.int64)
    accumulator = np.zeros((dim, k), dtype=W.dtype)
    margins = np.empty(k, dtype=W.dtype)
    current = np.empty((b, k), dtype=W.dtype)
    subtracted = np.zeros((b, k), dtype=W.dtype)
    coefficients = np.empty((b, k), dtype=W.dtype)
    seen = np.full(n if method == SAGA else 0, -1, dtype=np.int64)

    done = n_iter
    for t in range(n_iter):
        step_size = step_sizes[t]

        # Bring the rows of the drawn samples up to iteration t.
        n_support = 0
        for j in range(b):
            sample = index[t, j]
            for p in range(indptr[sample], indptr[sample + 1]):
                r = indices[p]
                if marked[r] != t:
                    marked[r] = t
                    support[n_support] = r
                    n_support += 1
                    _bring_up_to_date(r, t, lazy, W, reference, constant, mask, reg_l2, reg, step_sizes, closed_form, track_previous)

        for j in range(b):
            sample = index[t, j]
            _sparse_margins(indptr, indices, data, sample, W, margins)
            _derivative(loss, margins, targets[sample], sample_weight[sample], current[j])
            if method == SVRG or method == SARAH:
                _sparse_margins(indptr, indices, data, sample, reference, margins)
                _derivative(loss, margins, targets[sample], sample_weight[sample], subtracted[j])
            elif method == SAGA:
                subtracted[j, :] = table[sample, :]
            for c in range(k):
                coefficients[j, c] = (current[j, c] - subtracted[j, c]) * weights[t, j] / b

        # batch_gradient on the support, plus the dense part, then proximal_step on those rows.
        for s in range(n_support):
            accumulator[support[s], :] = 0.0
        for j in range(b):
            sample = index[t, j]
            for p in range(indptr[sample], indptr[sample + 1]):
                r = indices[p]
                for c in range(k):
                    accumulator[r, c] += data[p] * coefficients[j, c]
        for s in range(n_support):
            r = support[s]
            l2 = reg_l2 * mask[r]
            threshold = step_size * reg * mask[r]
            for c in range(k):
                direction = accumulator[r, c] + constant[r, c]
                if method == SARAH:
                    constant[r, c] = direction
                    reference[r, c] = W[r, c]
                W[r, c] = _proximal_update(W[r, c], direction, step_size, l2, threshold)
            last[r] = t + 1

        if method == SAGA:
            # A sample drawn twice in one batch enters the table and its mean once.
            for s in range(n_support):
                accumulator[support[s], :] = 0.0
            for j in range(b):
                sample = index[t, j]
                if seen[sample] == t:
                    continue
                seen[sample] = t
                for c in range(k):
                    subtracted[j, c] = (current[j, c] - subtracted[j, c]) / n
                for p in range(indptr[sample], indptr[sample + 1]):
                    r = indices[p]
                    for c in range(k):
                        accumulator[r, c] += data[p] * subtracted[j, c]
                table[sample, :] = current[j, :]
            for s in range(n_support):
                r = support[s]
                for c in range(k):
                    constant[r, c] += accumulator[r, c]

        scale[t + 1] = scale[t] * (1.0 - step_size * reg_l2)
        weighted[t + 1] = weighted[t] + step_size / scale[t + 1] if closed_form else 0.0
        step_total[t + 1] = step_total[t] + step_size
        if closed_form and scale[t + 1] < RESCALE_BELOW:
            for r in range(dim):
                _bring_up_to_date(r, t + 1, lazy, W, reference, constant, mask, reg_l2, reg, step_sizes, closed_form, track_previous)
            scale[t + 1] = 1.0
            weighted[t + 1] = 0.0

        if coins.shape[0] > 0 and coins[t] < snapshot_probability:
            done = t + 1
            break

    for r in range(dim):
        _bring_up_to_date(r, done, lazy, W, reference, constant, mask, reg_l2, reg, step_sizes, closed_form, track_previous)
    return done
