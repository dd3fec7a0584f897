import pytest

from lottery.orchestrate.reproduce import lth_markdown, lth_figures, lth_summary


def _row(level, density, acc, step=1000):
    return {"level": level, "density": density, "final_test_acc": acc, "early_stop_test_acc": acc,
            "early_stop_step": step}


TICKET = [_row(0, 1.0, 0.975), _row(1, 0.8, 0.979), _row(2, 0.51, 0.981), _row(3, 0.21, 0.982),
          _row(4, 0.135, 0.980), _row(5, 0.07, 0.983), _row(6, 0.036, 0.976), _row(7, 0.019, 0.970)]
REINIT = [_row(2, 0.51, 0.974), _row(5, 0.07, 0.977)]


def test_lth_summary_reads_the_claims_off_the_rows():
    summary = lth_summary(TICKET, REINIT)
    assert summary["dense_accuracy"] == 0.975
    assert summary["accuracy_at"]["0.036"] == {"density": 0.036, "accuracy": 0.976}
    assert summary["accuracy_at"]["0.510"]["accuracy"] == 0.981
    assert summary["tickets_beat_dense_down_to_13_5pct"] is True
    assert summary["tickets_beat_dense_by_0_3_points"] is True
    assert summary["reinit_worse"] is True
    assert [pair["level"] for pair in summary["reinit"]] == [2, 5]


def test_lth_summary_notices_when_a_claim_fails():
    ticket = [dict(row) for row in TICKET]
    ticket[1]["early_stop_test_acc"] = 0.970  # the 80% level below dense
    reinit = [_row(2, 0.51, 0.990)]
    summary = lth_summary(ticket, reinit)
    assert summary["tickets_beat_dense_down_to_13_5pct"] is False
    assert summary["reinit_worse"] is False


def test_lth_outputs(tmp_path):
    paths = lth_figures(TICKET, REINIT, tmp_path)
    assert [p.name for p in paths] == ["lth_accuracy.png", "lth_early_stop.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    text = lth_markdown(lth_summary(TICKET, REINIT), TICKET, REINIT)
    assert "| 2 | 51.00 | 0.9810 | 1000 | 0.9740 |" in " ".join(text.split())
    assert "dense accuracy: 0.9750" in text


def test_series_means_aggregate_each_level_over_the_seeds():
    from lottery.orchestrate.reproduce import series_means

    def row(stage, level, density, acc, step):
        kind = "branch" if stage.startswith("branch") else "level"
        return {"stage": stage, "kind": kind, "level": level, "density": density, "final_test_acc": acc + 0.001,
                "early_stop_test_acc": acc, "early_stop_step": step}

    rows = {seed: [row("level_00", 0, 1.0, 0.97 + 0.01 * seed, 1000 * (seed + 1)),
                   row("level_01", 1, 0.8, 0.98, 2000), row("branch/reinit/level_01", 1, 0.8, 0.96 - 0.01 * seed, 500)]
            for seed in range(3)}
    ticket = series_means(rows, "ticket")
    assert [r["level"] for r in ticket] == [0, 1]
    assert ticket[0]["early_stop_test_acc"] == pytest.approx(0.98) and ticket[0]["n"] == 3
    assert ticket[0]["std"] == pytest.approx(0.01) and ticket[0]["early_stop_step"] == pytest.approx(2000)
    reinit = series_means(rows, "branch reinit")
    assert [r["level"] for r in reinit] == [1] and reinit[0]["early_stop_test_acc"] == pytest.approx(0.95)
    summary = lth_summary(ticket, reinit)
    assert summary["reinit_worse"] and summary["reinit"][0]["ticket"] == pytest.approx(0.98)
    assert "0.9800 ± 0.0100 (3)" in lth_markdown(summary, ticket, reinit)


def test_prune_potentials_are_aggregated_over_the_seeds_robustness_summaries(tmp_path):
    from lottery.orchestrate.reproduce import prune_potentials
    from lottery.run.files import write_json

    for seed, (clean, noise) in enumerate([(0.96, 0.80), (0.98, 0.90), (0.97, 0.85)]):
        write_json(tmp_path / f"seed_{seed}" / "robustness" / "robustness.json",
                   {"prune_potential": {"ticket": {"clean": {"density": 1 - clean, "prune_potential": clean},
                                                   "noise": {"density": 1 - noise, "prune_potential": noise}},
                                        "rigl": {"clean": {"density": 1.0, "prune_potential": 0.0}}}})
    found = prune_potentials(tmp_path)
    assert found["ticket"]["clean"].mean == pytest.approx(0.97) and found["ticket"]["clean"].n == 3
    assert found["ticket"]["noise"].std == pytest.approx(0.05)
    assert found["rigl"]["clean"].mean == 0.0 and "noise" not in found["rigl"]


def test_snip_scores_a_batchnorm_free_lenet_identically_in_both_modes():
    from lottery.config import load_config
    from lottery.orchestrate.reproduce import snip_bn_modes_agree

    config = load_config("snip_lenet300", ["data.name=synthetic", "model.name=lenet_32_16", "data.val_size=0"])
    assert snip_bn_modes_agree(config, densities=(0.05,)) == {"0.05": True}
    with_batchnorm = load_config("resnet20", ["data.name=synthetic", "model.width=4"])
    assert snip_bn_modes_agree(with_batchnorm, densities=(0.05,)) == {"0.05": False}  # the check can tell


def test_dst_table_takes_the_small_dense_row_within_two_percent_of_the_level_density():
    from lottery.orchestrate.reproduce import _at_density
    from lottery.report.aggregate import Summary

    level, close, far = Summary.of([0.9, 0.92]), Summary.of([0.8]), Summary.of([0.7])
    assert _at_density({"0.512814": level}, 0.512814) == level.text()
    assert _at_density({"0.512006": close, "0.640000": far}, 0.512814) == close.text()  # 0.16 % off: same level
    assert _at_density({"0.490000": far}, 0.512814) == "-"  # 4.4 % off: another density
    assert _at_density({}, 0.5) == "-"


def test_snip_errors_keep_the_test_selected_minimum_apart_from_the_headline_numbers():
    from lottery.orchestrate.reproduce import _errors

    rows = [{"density": 0.05, "final_test_acc": 0.980, "early_stop_test_acc": 0.981, "best_test_acc": 0.984},
            {"density": 0.05, "final_test_acc": 0.982, "early_stop_test_acc": 0.979, "best_test_acc": 0.986}]
    errors = _errors(rows)
    assert errors["final"]["mean"] == pytest.approx(1.9) and errors["early_stop"]["mean"] == pytest.approx(2.0)
    assert errors["min_over_evaluations"]["mean"] == pytest.approx(1.5)  # 1 - max test acc: the SNIP code's number
    assert errors["min_over_evaluations"]["n"] == 2


def test_snip_variants_that_share_a_run_directory_read_only_their_own_snip_runs():
    from lottery.config import load_config
    from lottery.orchestrate.reproduce import _series, _snip_folder

    shipped, random_batch = load_config("snip_lenet300"), load_config("snip_lenet300", ["baseline.batch=random"])
    assert _snip_folder(shipped) == "snip" and _snip_folder(random_batch).startswith("snip-")
    rows = [{"stage": "baseline/init/snip/density_0.050000"},
            {"stage": f"baseline/init/{_snip_folder(random_batch)}/density_0.050000"}, {"stage": "level_00"}]
    assert [_series(row) for row in rows] == ["snip", _snip_folder(random_batch), "ticket"]
