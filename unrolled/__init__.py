"""Framework-free core of unrolled-zoo: problems, proximal operators, classical solvers and unrolled layers.

Only torch (and numpy/scikit-learn/scikit-image for data) is imported here: no Lightning, no Hydra.
"""

__version__ = "0.1.0"
