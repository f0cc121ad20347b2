"""The seed table's summary: paired gains over the warm start, and the seeded config run as it is."""
import os

import pytest

from pilotrl_jax.experiments.table import _seeded, format_summary, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gain_is_the_paired_difference_to_the_warm_start_per_seed():
    rows = [{"model": m, "mode": "adaplan", "seed": s, "success_rate": v}
            for s, w, f in ((0, 0.10, 0.30), (1, 0.20, 0.25), (2, 0.05, 0.20))
            for m, v in (("warm_start", w), ("stage3", f))]
    rows.append({"model": "stage3", "mode": "adaplan", "seed": 9, "success_rate": 0.9})  # no warm start: unpaired
    by = {(s["model"], s["mode"]): s for s in summarize(rows)}
    assert "gain" not in by[("warm_start", "adaplan")]
    gain, std = by[("stage3", "adaplan")]["gain"]
    assert gain == pytest.approx((0.20 + 0.05 + 0.15) / 3) and std == pytest.approx(0.076376, abs=1e-6)
    assert by[("stage3", "adaplan")]["seed_ids"] == [0, 1, 2, 9]
    text = format_summary(summarize(rows))
    assert "+13.3 ± 7.6" in text and "30.0 / 25.0 / 20.0 / 90.0" in text


def test_config_pipeline_keeps_the_config_and_sets_the_seed():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_cfg", os.path.join(ROOT, "configs", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    seeded = _seeded(cfg, 3)
    assert seeded.seed == 3 and cfg.seed == 0
    seeded.seed = 0
    assert seeded.to_dict() == cfg.to_dict()
