"""The QA panel's data function (plain Python) and a smoke run of the panel itself."""

from __future__ import annotations

import numpy as np
import pytest

from samseg_core.stages.qa_summary import per_class_bar_traces, qa_summary, summary_markdown


@pytest.fixture
def evaluated(dataset, tmp_path):
    """2 samples; 'pred' misses the dog in sample 1, 'better' is perfect; evaluated, failure-checked, queued."""
    import fiftyone as fo

    from samseg_core.stages.curation import build_relabel_queue
    from samseg_core.stages.evaluation import evaluate_iou
    from samseg_core.stages.failure_modes import detect_failures

    gt = np.zeros((20, 40), np.uint8)
    gt[5:15, 5:15] = 1
    gt[5:15, 20:30] = 2
    dataset.add_samples(
        [
            fo.Sample(
                filepath=str(tmp_path / f"{i}.png"),
                gt=fo.Segmentation(mask=gt),
                pred=fo.Segmentation(mask=p),
                better=fo.Segmentation(mask=gt),
            )
            for i, p in enumerate([gt, np.where(gt == 2, 0, gt).astype(np.uint8)])
        ]
    )
    dataset.mask_targets = {"gt": {0: "background", 1: "cat", 2: "dog"}}
    dataset.save()
    evaluate_iou(dataset, "pred", "gt", eval_key="ev", compare_fields=["better"])
    detect_failures(dataset, "pred", "gt")
    build_relabel_queue(dataset, eval_key="ev", failures_key="samseg_failures")
    return dataset


def test_summary_lists_fields_with_summed_miou_and_delta(evaluated):
    summary = qa_summary(evaluated)
    fields = {f["field"]: f for f in summary["evaluations"][0]["fields"]}
    results = evaluated.load_run_results("ev", cache=False).fields
    assert fields["pred"]["miou"] == pytest.approx(results["pred"]["summed"]["miou"])
    assert fields["better"]["miou"] == pytest.approx(1.0)
    assert fields["better"]["delta"] == pytest.approx(1.0 - fields["pred"]["miou"])


def test_summary_per_class_series_per_field(evaluated):
    table = qa_summary(evaluated)["per_class"]
    dog = table["classes"].index("dog")
    assert set(table["classes"]) == {"background", "cat", "dog"}
    assert table["series"]["pred"][dog] == pytest.approx(0.5) and table["series"]["better"][dog] == 1.0


def test_summary_worst_samples_come_first(evaluated):
    worst = qa_summary(evaluated, worst=1)["worst"]
    assert [w["filename"] for w in worst] == ["1.png"]


def test_summary_failure_counts_and_queues(evaluated):
    summary = qa_summary(evaluated)
    assert summary["failures"] == [
        {
            "key": "samseg_failures",
            "pred_field": "pred",
            "counts": {"missing": 1, "incomplete": 0, "overlapping": 0, "ok": 3},
            "stale": None,
        }
    ]
    assert summary["queues"][0]["views"] == [
        "relabel",
        "relabel-missing",
        "relabel-incomplete",
        "relabel-overlapping",
    ]


def test_summary_of_unknown_evaluation_raises(evaluated):
    with pytest.raises(ValueError, match="not a samseg IoU run"):
        qa_summary(evaluated, eval_key="nope")


def test_summary_of_fresh_dataset_is_empty(dataset):
    summary = qa_summary(dataset)
    assert (summary["evaluations"], summary["selected"], summary["worst"]) == ([], None, [])
    assert "No samseg evaluation" in summary_markdown(summary)


def test_bar_traces_one_per_field(evaluated):
    traces = per_class_bar_traces(qa_summary(evaluated))
    assert [t["name"] for t in traces] == ["pred", "better"]
    assert all(t["type"] == "bar" and len(t["x"]) == len(t["y"]) == 3 for t in traces)


def test_markdown_has_a_row_per_field(evaluated):
    text = summary_markdown(qa_summary(evaluated))
    assert "| pred |" in text and "| better |" in text and "missing 1" in text


def test_panel_on_load_renders_through_the_operator_framework(evaluated):
    import fiftyone.operators as foo

    params = {"__method__": "on_load", "panel_id": "p1", "state": {}, "event_args": {}}
    result = foo.execute_operator("@samseg/samseg/samseg_qa_panel", {"dataset": evaluated, "params": params})
    assert result.error is None


def test_queue_buttons_show_counts_and_leave_out_empty_queues(evaluated):
    from samseg_core.stages.qa_summary import queue_buttons

    buttons = queue_buttons(evaluated, qa_summary(evaluated))

    counts = {b["view"]: b["count"] for b in buttons}
    assert counts == {
        v: len(evaluated.load_saved_view(v)) for v in evaluated.list_saved_views() if counts.get(v)
    }
    assert "relabel" in counts and "relabel-missing" in counts
    assert "relabel-incomplete" not in counts and "relabel-overlapping" not in counts  # empty: no button
    assert all(b["label"] == f"Open '{b['view']}' ({b['count']})" for b in buttons)


def test_a_worst_samples_row_opens_that_sample(evaluated):
    from types import SimpleNamespace

    from operators.qa_panel import QAPanel

    opened = []
    worst = [{"id": "a", "filename": "1.png", "miou": 0.5}, {"id": "b", "filename": "0.png", "miou": 0.9}]
    ctx = SimpleNamespace(
        params={"row": 1},
        panel=SimpleNamespace(state=SimpleNamespace(worst=worst)),
        ops=SimpleNamespace(open_sample=lambda id=None: opened.append(id)),
        dataset=evaluated,
        trigger=lambda uri, params=None: None,
    )

    QAPanel().open_worst_sample(ctx)

    assert opened == ["b"]


def test_per_sample_qa_numbers_are_indexed_so_the_grid_can_sort_by_them(evaluated):
    miou_fields = [name for name in evaluated.get_field_schema() if name.endswith("_miou")]

    assert miou_fields and set(miou_fields) <= set(evaluated.list_indexes())
