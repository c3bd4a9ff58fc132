"""Per-iteration traces of the classical solvers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unrolled.metrics import ratio_db, squared_errors


@dataclass
class Trace:
    """Per-iteration record of a batched solver run; entry k describes the iterate after k iterations.

    Attributes:
        objective: batch mean of the objective, float64.
        nmse_db: NMSE in dB of the aggregate ratio over the batch (needs ``x_true``, else empty).
        nmse_db_per_sample: mean over the batch of per-sample NMSE in dB (needs ``x_true``, else empty).
        support_size: batch mean of the number of non-zero entries.
        time_s: seconds elapsed since the solver started, trace bookkeeping included.
    """

    objective: list[float] = field(default_factory=list)
    nmse_db: list[float] = field(default_factory=list)
    nmse_db_per_sample: list[float] = field(default_factory=list)
    support_size: list[float] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.__dict__.items()}


class TraceRecorder:
    """Accumulate trace entries on the solver's device and move them to the host once, at the end.

    Keeping the values on the device avoids a host synchronisation per iteration on CUDA; only the
    clock needs one, and only while tracing.
    """

    def __init__(self, x_true: Tensor | None, device: torch.device) -> None:
        self.x_true = x_true
        self.device = device
        self.rows: list[Tensor] = []
        self.times: list[float] = []
        self.start = time.perf_counter()

    def record(self, x: Tensor, objective: Tensor) -> None:
        values = [objective.mean(), (x != 0).sum(-1).to(torch.float64).mean()]
        if self.x_true is not None:
            error, reference = squared_errors(x, self.x_true)
            values.append(ratio_db(error.sum(), reference.sum()))
            values.append(ratio_db(error, reference).mean())
        self.rows.append(torch.stack(values))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - self.start)

    def finish(self) -> Trace:
        table = torch.stack(self.rows).cpu().tolist()
        trace = Trace(time_s=self.times)
        for row in table:
            trace.objective.append(row[0])
            trace.support_size.append(row[1])
            if self.x_true is not None:
                trace.nmse_db.append(row[2])
                trace.nmse_db_per_sample.append(row[3])
        return trace
