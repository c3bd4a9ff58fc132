r"""Robustness of inpainting models across missing rates, noise levels and outliers, beside classical TV-ADMM.

Each network is evaluated on the test images of an inpainting task at every (observed ratio, σ)
pair of a grid, whatever the setting it was trained at; the same masks and noise (the test seed)
serve every method. The classical column is TV-ADMM with the ℓ2 data term, its ``reg`` chosen per
setting from :data:`TV_REG_GRID` by the mean PSNR on validation patches of the same setting. A
last row adds salt-and-pepper outliers, where the classical column uses the ℓ1 data term (robust
TV-ADMM) and the ℓ2 one is shown beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unrolled.problems.imaging_tasks import ImagingBatch, InpaintingTask
from unrolled.report.imaging import CG_STEPS, mean_psnr
from unrolled.solvers.admm_imaging import admm_tv

TV_REG_GRID = (0.01, 0.03, 0.1, 0.3)
L1_TV_REG_GRID = (0.3, 1.0, 3.0)
OBSERVED_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)
SIGMAS_255 = (5.0, 15.0, 25.0)


def _tv(batch: ImagingBatch, reg: float, max_iter: int, data_term: str) -> torch.Tensor:
    return admm_tv(
        batch.operator, batch.y, reg, 1.0, data_term=data_term, cg_max_iter=CG_STEPS, max_iter=max_iter, abs_tol=0.0, rel_tol=0.0
    ).x


def best_tv(test: ImagingBatch, val: ImagingBatch, grid: tuple[float, ...], max_iter: int, data_term: str = "l2") -> dict[str, float]:
    """Return TV-ADMM's test PSNR with the reg of ``grid`` that is best on ``val``, and that reg."""
    scores = {reg: mean_psnr(val, _tv(val, reg, max_iter, data_term)) for reg in grid}
    reg = max(scores, key=scores.get)
    return {"reg": reg, "psnr_db": mean_psnr(test, _tv(test, reg, max_iter, data_term))}


@torch.no_grad()
def network_psnr(network: nn.Module, batch: ImagingBatch) -> float:
    return mean_psnr(batch, network(batch.y, batch.operator, noise_std=batch.noise_std))


def robustness_table(
    networks: dict[str, nn.Module],
    task: InpaintingTask,
    observed_ratios: tuple[float, ...] = OBSERVED_RATIOS,
    sigmas_255: tuple[float, ...] = SIGMAS_255,
    outlier_fraction: float = 0.1,
    max_iter: int = 300,
    val_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Return the mean test PSNR of every network and of tuned TV-ADMM at every setting of the grid, plus an outlier row.

    The outlier row uses the task's default observed ratio and noise, with ``outlier_fraction`` of
    the pixels replaced by 0 or 1 before masking.
    """
    say = progress or (lambda message: None)
    rows = []
    for ratio in observed_ratios:
        for sigma in sigmas_255:
            say(f"observed ratio {ratio}, sigma {sigma}")
            test = task.fixed_set("test", observed_ratio=ratio, sigma_255=sigma).to(torch.float32)
            val = task.fixed_set("val", observed_ratio=ratio, sigma_255=sigma).to(torch.float32).head(val_size)
            row = {"observed_ratio": ratio, "sigma_255": sigma, "outlier_fraction": 0.0}
            row["networks"] = {name: network_psnr(network, test) for name, network in networks.items()}
            row["tv_admm"] = best_tv(test, val, TV_REG_GRID, max_iter)
            rows.append(row)

    spec = {**task.spec(), "outlier_fraction": outlier_fraction}
    spec.pop("name")
    noisy = InpaintingTask(**spec)
    say(f"outliers {outlier_fraction}")
    test = noisy.fixed_set("test").to(torch.float32)
    val = noisy.fixed_set("val").to(torch.float32).head(val_size)
    rows.append(
        {
            "observed_ratio": noisy.test_observed_ratio,
            "sigma_255": noisy.test_sigma_255,
            "outlier_fraction": outlier_fraction,
            "networks": {name: network_psnr(network, test) for name, network in networks.items()},
            "tv_admm": best_tv(test, val, TV_REG_GRID, max_iter),
            "tv_admm_l1": best_tv(test, val, L1_TV_REG_GRID, max_iter, data_term="l1"),
        }
    )
    return {"task": task.spec(), "max_iter": max_iter, "rows": rows}


def render_robustness(table: dict[str, Any]) -> str:
    """Return the table as Markdown, one row per setting, PSNR in dB."""
    names = list(table["rows"][0]["networks"])
    caption = f"Mean test PSNR in dB; TV-ADMM runs {table['max_iter']} iterations with reg chosen on validation patches of each setting.\n\n"
    header = "| observed | σ (0–255) | outliers | " + " | ".join(names) + " | TV-ADMM ℓ2 (reg) | TV-ADMM ℓ1 (reg) |"
    lines = [header, "|" + "---:|" * (len(names) + 5)]
    for row in table["rows"]:
        cells = [f"{row['networks'][name]:.2f}" for name in names]
        l2 = f"{row['tv_admm']['psnr_db']:.2f} ({row['tv_admm']['reg']:g})"
        l1 = f"{row['tv_admm_l1']['psnr_db']:.2f} ({row['tv_admm_l1']['reg']:g})" if "tv_admm_l1" in row else "·"
        lines.append(
            f"| {row['observed_ratio']:.0%} | {row['sigma_255']:g} | {row['outlier_fraction']:.0%} | " + " | ".join(cells) + f" | {l2} | {l1} |"
        )
    return caption + "\n".join(lines) + "\n"
