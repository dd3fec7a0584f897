
from lottery.workflows.reproduce import _lth_markdown, lth_figures, lth_summary


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
    text = _lth_markdown(lth_summary(TICKET, REINIT), TICKET, REINIT)
    assert "| 2 | 51.00 | 0.9810 | 1000 | 0.9740 |" in " ".join(text.split())
    assert "dense accuracy: 0.9750" in text
