"""Every figure lottery draws labels both axes, and density axes tick and label every density plotted."""
import pytest

from lottery.report.figures import (accuracy_vs_density_figure, accuracy_vs_step_figure, density_label,
                                    layer_density_figure)
from lottery.report.run_report import Series, StageRecord
from lottery.workflows.instability import barrier_figure, curves_figure
from lottery.orchestrate.reproduce import lth_figure_objects

LTH_DENSITIES = [0.8 ** level for level in range(19)]  # 18 levels of 20%: neighbours 20% apart down to 1.8%


def drawn(figure):
    figure.canvas.draw()  # tick labels are final only once drawn
    return figure


def assert_both_axes_labelled(figure):
    for axes in drawn(figure).axes:
        if axes.get_label() == "<colorbar>":
            continue
        assert axes.get_xlabel().strip(), "x axis without a label"
        assert axes.get_ylabel().strip(), "y axis without a label"


def ticks(axes) -> dict[float, str]:
    return {float(location): label.get_text()
            for location, label in zip(axes.get_xticks(), axes.get_xticklabels())}


def assert_every_density_ticked(axes, densities):
    shown = ticks(axes)
    low, high = sorted(axes.get_xlim())
    for density in densities:
        assert density in shown, f"density {density} has no tick"
        assert shown[density] == density_label(density) and shown[density], density
        assert low <= density <= high, f"density {density} is outside the axis"
    labels = [shown[density] for density in set(densities)]
    assert len(set(labels)) == len(labels), f"two densities share a label: {sorted(labels)}"


def rows_at(densities, start=0.9):
    return [{"level": level, "density": density, "final_test_acc": start - 0.01 * level,
             "layers": {"fc1.weight": density, "fc2.weight": 0.0 if level == len(densities) - 1 else density,
                        "out.weight": min(1.0, 2 * density)}}
            for level, density in enumerate(densities)]


def series_with_baseline():
    ticket = rows_at(LTH_DENSITIES)
    baseline = [{"method": "snip", "density": d, "final_test_acc": 0.8} for d in (0.3, 0.05, 0.0123)]
    history = [{"step": step, "test_acc": 0.5 + step / 1000} for step in (0, 100, 200)]
    stages = [StageRecord(None, None, row, history) for row in ticket[:3]]
    return [Series("ticket", "ticket", ticket, stages), Series("dense", "dense", ticket[:1]),
            Series("snip", "baseline", baseline)]


def test_accuracy_vs_density_ticks_every_density_of_every_series():
    series = series_with_baseline()
    figure = accuracy_vs_density_figure(series)
    assert_both_axes_labelled(figure)
    plotted = [row["density"] for entry in series if entry.kind != "dense" for row in entry.rows]
    assert_every_density_ticked(figure.axes[0], plotted)


def test_densities_within_two_percent_share_one_tick_so_labels_never_overlap():
    """A small-dense control 0.4 % below its level (0.03567 beside 0.03583 in `lottery reproduce dst`), and one
    3.2 % below (0.01791 beside 0.01851 before its widths were solved)."""
    ticket = rows_at(LTH_DENSITIES)
    close, apart = 0.996 * 0.8 ** 15, 0.968 * 0.8 ** 18
    control = [{"method": "small_dense", "density": d, "final_test_acc": 0.9} for d in (close, apart)]
    figure = accuracy_vs_density_figure([Series("ticket", "ticket", ticket), Series("small_dense", "baseline",
                                                                                    control)])
    shown = ticks(drawn(figure).axes[0])
    assert close not in shown and 0.8 ** 15 in shown  # one tick, the level's, for the two neighbours
    assert apart in shown  # far enough for its own tick
    assert_every_density_ticked(figure.axes[0], LTH_DENSITIES[1:])
    locations = sorted(shown)
    assert all(high / low >= 1.02 for low, high in zip(locations, locations[1:]))


def test_layer_density_and_accuracy_vs_step_label_both_axes():
    series = series_with_baseline()
    layers = layer_density_figure(series[0])
    assert_both_axes_labelled(layers)
    assert [label.get_text() for label in layers.axes[0].get_xticklabels()] == ["fc1.weight", "fc2.weight",
                                                                                "out.weight"]
    assert_both_axes_labelled(accuracy_vs_step_figure(series[0]))


def test_the_reproduce_figures_tick_every_level_density():
    ticket = [{**row, "early_stop_test_acc": row["final_test_acc"], "early_stop_step": 1000}
              for row in rows_at(LTH_DENSITIES)]
    reinit = [ticket[level] for level in (3, 7, 12, 15)]
    figures = lth_figure_objects(ticket, reinit)
    assert set(figures) == {"lth_accuracy.png", "lth_early_stop.png"}
    for figure in figures.values():
        assert_both_axes_labelled(figure)
        assert_every_density_ticked(figure.axes[0], LTH_DENSITIES)


def instability_rows(rewinds):
    return [{"rewind": label, "rewind_step": step, "barrier": 0.1 / (1 + index), "alphas": [0.0, 0.5, 1.0],
             "test_error": [0.1, 0.2 + index, 0.1]} for index, (step, label) in enumerate(rewinds)]


@pytest.mark.parametrize("rewinds", [[(0, "0it"), (100, "100it"), (782, "2ep")],
                                     [(0, "0it"), (1, "1it"), (10, "10it"), (100, "100it"), (1000, "1000it"),
                                      (2346, "6ep")]])
def test_the_instability_figures_label_every_rewind_step_in_the_unit_given(rewinds):
    rows = instability_rows(rewinds)
    barrier = barrier_figure(rows)
    assert_both_axes_labelled(barrier)
    assert ticks(barrier.axes[0]) == {float(step): label for step, label in rewinds}
    curves = curves_figure(rows)
    assert_both_axes_labelled(curves)
    assert [line.get_label() for line in curves.axes[0].lines] == [f"k = {label}" for _, label in rewinds]
