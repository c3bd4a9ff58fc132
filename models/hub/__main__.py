"""Command line of the hub: ``python -m models.hub list`` and ``python -m models.hub verify [NAME ...]``.

``list`` prints one row per shipped checkpoint from its card. ``verify`` regenerates each model's
test set from the seeds in its card, re-measures the NMSE of every layer in float64 and exits with
status 1 when any layer of either convention differs from the card by more than the tolerance.
Tables go to stdout, progress and errors to stderr. The folder is ``$UNROLLED_ZOO_CHECKPOINTS``
or ``checkpoints/`` of this checkout.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence

from models.hub.imaging import imaging_checkpoints_dir, list_imaging_pretrained, read_imaging_card, verify_imaging_model
from models.hub.loading import CHECKPOINTS_ENV, checkpoints_dir, list_pretrained
from models.hub.verify import DEFAULT_TOLERANCE_DB, summarize_checkpoint, verify_models

log = logging.getLogger("models.hub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.hub",
        description=f"List and verify the shipped checkpoints (folder: ${CHECKPOINTS_ENV} or checkpoints/).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "list",
        help="print name, network, tag, problem, layers, test NMSE at the last layer, storage codec and weights size of every shipped "
        "model, then the imaging models with their task, stages, PSNR and SSIM",
    )
    verify = commands.add_parser(
        "verify",
        help="re-measure the test NMSE of every layer in float64 (PSNR and SSIM of every stage for imaging models) "
        "and compare with the model cards",
    )
    verify.add_argument("names", nargs="*", metavar="NAME", help="shipped models to verify (default: all of them)")
    verify.add_argument(
        "--tolerance-db",
        type=float,
        default=DEFAULT_TOLERANCE_DB,
        help=f"largest accepted deviation from the card, in dB, on every layer and in both NMSE conventions (default {DEFAULT_TOLERANCE_DB})",
    )
    return parser


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """Align ``rows`` under ``headers``. ``align`` has one letter per column, ``l`` (left) or ``r`` (right)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for cells in [headers, *rows]:
        aligned = [cell.ljust(width) if side == "l" else cell.rjust(width) for cell, width, side in zip(cells, widths, align)]
        lines.append("  ".join(aligned).rstrip())
    return "\n".join(lines)


def format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_list() -> int:
    """Print the table of the shipped checkpoints and return the exit status, 0."""
    names = list_pretrained()
    if not names:
        print(f"no checkpoints in {checkpoints_dir()}")
        list_imaging()
        return 0

    headers = ["name", "network", "tag", "problem", "layers", "NMSE (dB)", "per-sample NMSE (dB)", "storage", "weights (MB)"]
    rows = []
    for name in names:
        summary = summarize_checkpoint(name)
        rows.append(
            [
                summary.name,
                summary.network or "-",
                summary.tag or "-",
                summary.problem or "-",
                "-" if summary.n_layers is None else str(summary.n_layers),
                format_number(summary.nmse_db),
                format_number(summary.nmse_db_per_sample),
                summary.codec or "-",
                format_number(summary.weights_mb),
            ]
        )
    print(f"{len(names)} checkpoints in {checkpoints_dir()}; test NMSE after the last layer, float64")
    print(format_table(headers, rows, align="llllrrrlr"))
    list_imaging()
    return 0


def list_imaging() -> None:
    """Print the table of the shipped imaging checkpoints, if there are any."""
    names = list_imaging_pretrained()
    if not names:
        return
    headers = ["name", "network", "task", "stages", "PSNR (dB)", "SSIM", "weights (MB)"]
    rows = []
    for name in names:
        card_path = imaging_checkpoints_dir() / f"{name}.json"
        try:
            card = read_imaging_card(card_path)
        except (OSError, ValueError) as error:
            log.warning("cannot read the imaging model card %s: %s", card_path, error)
            rows.append([name, "-", "-", "-", "-", "-", "-"])
            continue
        weights = card_path.parent / card["weights_file"]
        task = card["task"]
        setting = ", ".join(f"{key}={value}" for key, value in task.items() if key in ("cs_ratio", "observed_ratio", "sigma_255", "sampling"))
        rows.append(
            [
                name,
                card["network"],
                f"{task['name']} ({setting})",
                str(card["n_layers"]),
                format_number(card["test_metrics"]["psnr_db"][-1]),
                f"{card['test_metrics']['ssim'][-1]:.4f}",
                format_number(weights.stat().st_size / 1e6 if weights.is_file() else None),
            ]
        )
    print(f"\n{len(names)} imaging checkpoints in {imaging_checkpoints_dir()}; mean test PSNR and SSIM after the last stage")
    print(format_table(headers, rows, align="lllrrrr"))


def run_verify_imaging(names: list[str]) -> int:
    """Verify the imaging checkpoints ``names`` and print one row per model. Return 0 if all pass, else 1."""
    results = [verify_imaging_model(name) for name in names]
    headers = ["name", "card PSNR (dB)", "measured PSNR (dB)", "max PSNR deviation (dB)", "max SSIM deviation", "status"]
    rows = [
        [
            result.name,
            format_number(result.card_psnr_db),
            format_number(result.measured_psnr_db),
            "-" if result.max_psnr_deviation_db is None else f"{result.max_psnr_deviation_db:.2g}",
            "-" if result.max_ssim_deviation is None else f"{result.max_ssim_deviation:.2g}",
            "OK" if result.ok else "FAILED",
        ]
        for result in results
    ]
    print(format_table(headers, rows, align="lrrrrr"))
    for result in results:
        if result.error is not None:
            print(f"{result.name}: {result.error}")
    failed = [result.name for result in results if not result.ok]
    if failed:
        log.error("verify FAILED for %d of %d imaging models: %s", len(failed), len(results), ", ".join(failed))
        return 1
    print(f"OK: all {len(results)} imaging models match their cards on every stage")
    return 0


def run_verify(names: list[str], tolerance_db: float) -> int:
    """Verify ``names`` (all shipped models when empty) and print one row per model. Return 0 if all pass, else 1."""
    names = names or list_pretrained()
    if not names:
        log.error("no checkpoints to verify in %s; set %s to the folder of the model cards.", checkpoints_dir(), CHECKPOINTS_ENV)
        return 1

    log.info(
        "verifying %d models in %s: every layer, both NMSE conventions, tolerance %g dB",
        len(names),
        checkpoints_dir(),
        tolerance_db,
    )
    results = verify_models(names, tolerance_db)

    headers = [
        "name",
        "layers",
        "card NMSE (dB)",
        "measured NMSE (dB)",
        "card per-sample (dB)",
        "measured per-sample (dB)",
        "max deviation (dB)",
        "at",
        "status",
    ]
    rows = [
        [
            result.name,
            "-" if result.n_layers is None else str(result.n_layers),
            format_number(result.card_nmse_db),
            format_number(result.measured_nmse_db),
            format_number(result.card_nmse_db_per_sample),
            format_number(result.measured_nmse_db_per_sample),
            "-" if result.max_deviation_db is None else f"{result.max_deviation_db:.2g}",
            result.max_deviation_at if result.max_deviation_db else "-",
            "OK" if result.ok else "FAILED",
        ]
        for result in results
    ]
    print(format_table(headers, rows, align="lrrrrrrlr"))
    for result in results:
        if result.error is not None:
            print(f"{result.name}: {result.error}")

    failed = [result.name for result in results if not result.ok]
    if failed:
        log.error(
            "verify FAILED for %d of %d models: %s. The weights, the card or the network code changed since the card "
            "was written. Restore the changed file, or re-measure with models.hub.refresh_test_metrics if the weights "
            "and the code are right.",
            len(failed),
            len(results),
            ", ".join(failed),
        )
        return 1
    print(f"OK: all {len(results)} models match their cards within {tolerance_db:g} dB on every layer")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if args.command == "list":
        return run_list()

    if not (math.isfinite(args.tolerance_db) and args.tolerance_db >= 0):
        parser.error(f"--tolerance-db must be a finite number >= 0, got {args.tolerance_db}")
    known = list_pretrained()
    known_imaging = list_imaging_pretrained()
    unknown = [name for name in args.names if name not in known and name not in known_imaging]
    if unknown:
        available = ", ".join([*known, *known_imaging]) or "none"
        parser.error(f"unknown models {', '.join(unknown)} in {checkpoints_dir()}; available: {available}")
    sparse = [name for name in args.names if name in known] if args.names else known
    imaging = [name for name in args.names if name in known_imaging] if args.names else known_imaging
    status = 0
    # With nothing to verify at all, run_verify reports the empty folder as an error.
    if sparse or not imaging:
        status = run_verify(sparse, args.tolerance_db)
    if imaging:
        status = max(status, run_verify_imaging(imaging))
    return status


if __name__ == "__main__":
    sys.exit(main())
