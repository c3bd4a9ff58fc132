r"""Base of the unrolled sparse-coding networks: K iterations of a solver, one layer each.

Every network returns the estimate of every layer, stacked as (n_layers, batch, n), so that
per-layer metrics and per-layer losses need one forward pass. Networks with parameters stored per
layer list them in :meth:`UnrolledISTA.per_layer_parameters`, which the layer-wise training
protocol (:mod:`models.layerwise`) uses to train one layer at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unrolled.operators import check_measurements, check_operator

# Support selection of LISTA-CPSS / ALISTA: layer k (from 1) lets the largest min(1.2·k, 13) percent
# of the entries bypass the threshold.
SUPPORT_PERCENT_PER_LAYER = 1.2
SUPPORT_PERCENT_MAX = 13.0


def support_bypass_fraction(
    layer: int, per_layer: float = SUPPORT_PERCENT_PER_LAYER, maximum: float = SUPPORT_PERCENT_MAX
) -> float:
    """Fraction of entries that bypass the threshold in ``layer`` (counted from 1): min(per_layer·layer, maximum) percent."""
    return min(per_layer * layer, maximum) / 100.0


class UnrolledISTA(nn.Module):
    """Base of the unrolled networks: stores A, starts from x = 0 and applies ``n_layers`` layers.

    Subclasses implement :meth:`layer`. The state carried from layer to layer is the estimate x by
    default. Networks with memory (momentum, the Onsager term of AMP) carry a tuple, so they override
    :meth:`initial_state` and :meth:`estimate`. ``support_selection`` turns on the bypass of
    :func:`support_bypass_fraction` in every layer.

    ``checkpoint_every`` (None by default) turns on activation checkpointing when gradients are
    recorded: the layers run in segments of that many, and each segment keeps only its input
    state for the backward pass, which runs the segment's forward pass again. A training step then
    stores ``n_layers / c`` states plus the activations of one segment of ``c`` layers, instead of
    the activations of every layer, for about one more forward pass of compute. It is a training
    setting, not part of the architecture, so it is an attribute rather than a constructor
    argument and is not saved with the weights.
    """

    _checkpoint_every: int | None = None

    def __init__(self, A: Tensor, n_layers: int, support_selection: bool = False) -> None:
        super().__init__()
        check_operator(A)
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}.")
        self.register_buffer("A", A.detach().clone())
        self.n_layers = n_layers
        self.support_selection = support_selection

    @property
    def checkpoint_every(self) -> int | None:
        """Layers per activation-checkpointing segment during training, or None for no checkpointing."""
        return self._checkpoint_every

    @checkpoint_every.setter
    def checkpoint_every(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(
                f"checkpoint_every must be a number of layers >= 1, or None (null in a config) to turn activation "
                f"checkpointing off; got {value!r}."
            )
        self._checkpoint_every = value

    def bypass_fraction(self, k: int) -> float:
        return support_bypass_fraction(k + 1) if self.support_selection else 0.0

    def per_layer_parameters(self) -> dict[str, int]:
        """Parameters stored per layer, mapped to the layer of their first entry.

        Entry i (along dimension 0) of parameter ``name`` belongs to layer ``offset + i`` (from 0).
        Parameters not listed are shared by all layers. The default lists every parameter with
        ``n_layers`` entries along dimension 0.
        """
        return {name: 0 for name, p in self.named_parameters() if p.ndim >= 1 and p.shape[0] == self.n_layers}

    def initial_state(self, y: Tensor) -> Any:
        """Return the state before the first layer: x = 0."""
        return y.new_zeros(*y.shape[:-1], self.A.shape[1])

    def estimate(self, state: Any) -> Tensor:
        """Return the estimate x contained in ``state``."""
        return state

    def layer(self, k: int, state: Any, y: Tensor) -> Any:
        """Apply layer ``k`` (from 0) to ``state`` given measurements ``y``; return the next state."""
        raise NotImplementedError

    def forward(self, y: Tensor, n_layers: int | None = None, all_layers: bool = True) -> Tensor:
        """Return the estimates of layers 1..``n_layers`` (all by default), shape (n_layers, *y.shape[:-1], n).

        With ``all_layers=False`` only the last estimate is returned, shape (1, *y.shape[:-1], n), and
        the others are freed as the pass goes, which is what a loss on the last layer needs.
        """
        check_measurements(y, self.A)
        n_layers = self.n_layers if n_layers is None else n_layers
        if not 1 <= n_layers <= self.n_layers:
            raise ValueError(f"n_layers must lie in [1, {self.n_layers}], got {n_layers}.")
        checkpointing = self.checkpoint_every is not None and torch.is_grad_enabled()
        segment = self.checkpoint_every if checkpointing else n_layers
        state = self.initial_state(y)
        estimates: list[Tensor] = []
        for start in range(0, n_layers, segment):
            stop = min(start + segment, n_layers)
            if checkpointing:
                state, segment_estimates = checkpoint(self._run_layers, start, stop, state, y, all_layers, use_reentrant=False)
            else:
                state, segment_estimates = self._run_layers(start, stop, state, y, all_layers)
            estimates.extend(segment_estimates)
        return torch.stack(estimates) if all_layers else self.estimate(state).unsqueeze(0)

    def _run_layers(self, start: int, stop: int, state: Any, y: Tensor, keep_estimates: bool) -> tuple[Any, list[Tensor]]:
        """Apply layers ``start``..``stop - 1``; return the state after them and, if asked, each layer's estimate."""
        estimates = []
        for k in range(start, stop):
            state = self.layer(k, state, y)
            if keep_estimates:
                estimates.append(self.estimate(state))
        return state, estimates


def per_layer(value: float, n_layers: int, dtype: torch.dtype) -> nn.Parameter:
    """Return a learnable vector with ``value`` once per layer."""
    return nn.Parameter(torch.full((n_layers,), float(value), dtype=dtype))


def stacked(matrix: Tensor, copies: int) -> nn.Parameter:
    """Return a learnable (copies, *matrix.shape) tensor initialised with ``copies`` copies of ``matrix``."""
    return nn.Parameter(matrix.detach().expand(copies, *matrix.shape).clone())
