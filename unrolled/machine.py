"""Description of the machine a result was measured on, for reports, model cards and benchmarks."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` reports."""
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


LIBRARIES = ("torch", "pytorch-lightning", "torchmetrics", "timm", "hydra-core", "safetensors", "scikit-learn")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries results depend on (None when one is not installed)."""
    versions = {}
    for package in LIBRARIES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def describe_machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Return the CPU model, core and torch thread counts, library versions, device and GPU name as plain data."""
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": gpu,
        "versions": library_versions(),
    }
