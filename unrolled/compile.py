"""``torch.compile`` with a fallback to eager mode, for the networks and the solvers.

Compilation can fail where eager mode works: no C++ compiler for inductor's CPU kernels, an
operation that dynamo cannot trace, an unsupported platform. The caller then gets correct results at
eager speed and a warning with the compiler's error, not a crash.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.exc import TorchDynamoException

log = logging.getLogger(__name__)


class CompileFallbackWarning(RuntimeWarning):
    """Warned once when a compiled function failed to compile and runs in eager mode from then on."""


def compile_or_eager(function: Callable[..., Any], name: str, **compile_options: Any) -> Callable[..., Any]:
    """Return ``torch.compile(function, **compile_options)`` that switches to ``function`` if compilation fails.

    Compilation happens at the first call and again for each new input signature (other shapes,
    dtypes or Python arguments), so any call may compile. When a call raises one of dynamo's
    errors (:class:`torch._dynamo.exc.TorchDynamoException`, which also wraps inductor's compiler
    failures), the call is repeated with ``function`` and every later call runs eagerly. Errors
    that ``function`` itself raises, such as invalid inputs, pass through unchanged.

    Args:
        function: the function or module to compile.
        name: what is compiled, for the warning (for example ``"network alista"``).
        compile_options: keyword arguments of :func:`torch.compile` (``mode``, ``dynamic``, ...).
    """
    compiled = torch.compile(function, **compile_options)
    use_eager = False

    def run(*args: Any, **kwargs: Any) -> Any:
        nonlocal use_eager
        if use_eager:
            return function(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as error:
            use_eager = True
            message = f"torch.compile failed for {name}, which runs in eager mode from now on: {type(error).__name__}: {error}"
            log.warning("%s", message.splitlines()[0])
            warnings.warn(message, CompileFallbackWarning, stacklevel=2)
            return function(*args, **kwargs)

    run.compiled = compiled
    return run
