"""Reproduction page: generated from the shipped cards, with Open-L2O's anchors and the 3 dB status."""

from __future__ import annotations

import json
import shutil

import pytest

from models.reproduction import (
    END,
    MODELS,
    PAGE,
    SETTINGS,
    START,
    Entry,
    anchor_of,
    collect_entries,
    render_details,
    render_grid,
    render_table,
    update_page,
)


def test_page_matches_shipped_cards():
    text = PAGE.read_text()
    generated = text.split(START, 1)[1].split(END, 1)[0].lstrip("\n")

    assert generated == render_table(collect_entries()), "run `python -m models.reproduction` after publishing"


def test_grid_covers_every_model_and_setting():
    entries = collect_entries()

    assert {(entry.model, entry.setting) for entry in entries} == {(m, s) for m in MODELS for s in SETTINGS}


def test_anchors_of_open_l2o():
    assert anchor_of("alista", "sc256x512_noiseless") == -78.0
    assert anchor_of("glista", "sc250x500_snr20") == -22.0
    assert anchor_of("lista_cpss", "sc250x500_kappa30") == -26.5
    assert anchor_of("lamp", "sc512x1024_noiseless") == -53.0
    assert anchor_of("alista", "sc250x500_noiseless") is None


@pytest.mark.parametrize(
    ("per_sample", "expected"),
    [(-76.0, "within 3 dB or better"), (-75.0, "within 3 dB or better"), (-70.0, "8.0 dB worse"), (None, "not trained")],
)
def test_status_against_anchor(per_sample, expected):
    nmse = None if per_sample is None else per_sample + 5
    entry = Entry("alista", "sc256x512_noiseless", -78.0, nmse, per_sample, 60.0, 100, "cpu")

    assert entry.status == expected


def test_card_figures_and_training_chain(tmp_path):
    card = {
        "n_layers": 16,
        "test_metrics": {"per_layer": {"nmse_db": [-10.0, -20.5], "nmse_db_per_sample": [-11.0, -22.25]}},
        "machine": {"cpu": "test CPU", "torch_threads": 1, "gpu": None},
        "training": {"time_s": 120.0, "global_steps": 300, "init_from": {"training": {"time_s": 60.0, "global_steps": 100}}},
    }
    (tmp_path / "lista_cpss.sc250x500_snr20.json").write_text(json.dumps(card))

    entry = {(e.model, e.setting): e for e in collect_entries(tmp_path)}[("lista_cpss", "sc250x500_snr20")]

    assert (entry.nmse_db, entry.nmse_db_per_sample) == (-20.5, -22.25)
    assert (entry.training_s, entry.steps) == (180.0, 400)
    assert entry.anchor_db == -20.0
    assert entry.status == "within 3 dB or better"


def test_missing_markers_rejected(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# no markers\n")

    with pytest.raises(ValueError, match="is missing the markers"):
        update_page(page)


def test_update_keeps_surrounding_text(tmp_path):
    page = tmp_path / "page.md"
    shutil.copy(PAGE, page)
    before = page.read_text()

    update_page(page)

    assert page.read_text() == before


def test_tied_checkpoint_marked(tmp_path):
    card = {
        "n_layers": 16,
        "network_kwargs": {"reg": 0.2, "tied": True},
        "test_metrics": {"per_layer": {"nmse_db": [-17.0], "nmse_db_per_sample": [-18.0]}},
        "machine": {"cpu": "test CPU", "torch_threads": 1, "gpu": None},
        "training": {"time_s": 60.0, "global_steps": 100},
        "storage": {"codec": "float16"},
        "weights_file": "lista.sc250x500_noiseless.safetensors",
    }
    (tmp_path / "lista.sc250x500_noiseless.json").write_text(json.dumps(card))
    (tmp_path / card["weights_file"]).write_bytes(bytes(1_500_000))

    entries = collect_entries(tmp_path)

    assert "| lista | -17.0 / -18.0 tied |" in render_grid(entries)
    details = render_details(entries)
    assert "| lista (tied) | sc250x500_noiseless | -17.00 | -18.00 |" in details
    assert details.splitlines()[-1].endswith("| float16, 1.50 MB |")
