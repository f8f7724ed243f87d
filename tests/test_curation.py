"""Relabel queues: selection, worst-first views, idempotent re-runs, and never touching foreign tags or views."""

from __future__ import annotations

import numpy as np
import pytest

from samseg_core.stages.curation import (
    build_relabel_queue,
    delete_relabel_queue,
    load_relabel_results,
    queue_records,
)


@pytest.fixture
def qa_dataset(dataset, tmp_path):
    """4 samples: perfect, dog missing, cat half covered, nothing predicted; evaluated and failure-checked."""
    import fiftyone as fo

    from samseg_core.stages.evaluation import evaluate_iou
    from samseg_core.stages.failure_modes import detect_failures

    gt = np.zeros((20, 40), np.uint8)
    gt[5:15, 5:15] = 1
    gt[5:15, 20:30] = 2
    preds = [gt.copy(), np.where(gt == 2, 0, gt), gt.copy(), np.zeros_like(gt)]
    preds[2][5:10, 5:15] = 0
    dataset.add_samples(
        [
            fo.Sample(
                filepath=str(tmp_path / f"{i}.png"), gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=p)
            )
            for i, p in enumerate(preds)
        ]
    )
    dataset.mask_targets = {"gt": {0: "background", 1: "cat", 2: "dog"}}
    dataset.save()
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    detect_failures(dataset, "pred", "gt")
    return dataset


def _names(dataset, ids):
    by_id = dict(zip(dataset.values("id"), dataset.values("filepath")))
    return [by_id[i].rsplit("/", 1)[-1] for i in ids]


def test_queue_holds_the_worst_samples_worst_first(qa_dataset):
    queue = build_relabel_queue(qa_dataset, eval_key="ev", max_samples=2)
    view = qa_dataset.load_saved_view("relabel")
    assert _names(qa_dataset, queue.sample_ids) == ["3.png", "1.png"]
    assert _names(qa_dataset, view.values("id")) == ["3.png", "1.png"]


def test_miou_threshold_selects_samples(qa_dataset):
    queue = build_relabel_queue(qa_dataset, eval_key="ev", miou_below=0.9)
    assert _names(qa_dataset, queue.sample_ids) == ["3.png", "1.png", "2.png"]


def test_failure_mode_views_hold_samples_with_that_mode(qa_dataset):
    build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures")
    missing = _names(qa_dataset, qa_dataset.load_saved_view("relabel-missing").values("id"))
    incomplete = _names(qa_dataset, qa_dataset.load_saved_view("relabel-incomplete").values("id"))
    assert (missing, incomplete) == (["3.png", "1.png"], ["2.png"])


def test_failure_labels_of_chosen_modes_are_tagged(qa_dataset):
    queue = build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures", modes=["missing"])
    tags = qa_dataset.count_label_tags(label_fields="samseg_failures")
    assert tags == {"relabel": 3} and queue.tagged_labels == 3


def test_rerun_does_not_duplicate_tags_or_views(qa_dataset):
    build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures")
    views_before = qa_dataset.list_saved_views()
    second = build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures")
    assert qa_dataset.list_saved_views() == views_before
    assert qa_dataset.count_sample_tags() == {"relabel": 3}
    assert sorted(tags.count("relabel") for tags in qa_dataset.values("tags")) == [0, 1, 1, 1]
    assert qa_dataset.count_label_tags(label_fields="samseg_failures") == {"relabel": 4}
    assert (second.added, second.removed) == (0, 0)


def test_rerun_untags_samples_that_left_the_queue(qa_dataset):
    build_relabel_queue(qa_dataset, eval_key="ev", max_samples=3)
    queue = build_relabel_queue(qa_dataset, eval_key="ev", max_samples=1)
    assert queue.removed == 2
    assert _names(qa_dataset, qa_dataset.match_tags("relabel").values("id")) == ["3.png"]


def test_rerun_deletes_mode_views_it_no_longer_needs(qa_dataset):
    build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures")
    build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures", modes=["missing"])
    assert sorted(qa_dataset.list_saved_views()) == ["relabel", "relabel-missing"]


def test_foreign_sample_tag_is_refused_and_left_alone(qa_dataset):
    qa_dataset.select(qa_dataset.first().id).tag_samples("relabel")
    with pytest.raises(ValueError, match="not created by relabel queue"):
        build_relabel_queue(qa_dataset, eval_key="ev", max_samples=1)
    assert _names(qa_dataset, qa_dataset.match_tags("relabel").values("id")) == ["0.png"]


def test_foreign_saved_view_is_refused_and_left_alone(qa_dataset):
    qa_dataset.save_view("relabel-missing", qa_dataset.limit(1))
    with pytest.raises(ValueError, match="saved views"):
        build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures")
    assert len(qa_dataset.load_saved_view("relabel-missing")) == 1 and not qa_dataset.count_sample_tags()


def test_overwrite_takes_over_a_foreign_tag(qa_dataset):
    qa_dataset.select(qa_dataset.first().id).tag_samples("relabel")
    build_relabel_queue(qa_dataset, eval_key="ev", max_samples=1, overwrite=True)
    assert _names(qa_dataset, qa_dataset.match_tags("relabel").values("id")) == ["3.png"]


def test_other_tags_and_views_survive_rerun_and_delete(qa_dataset):
    qa_dataset.tag_samples("keep")
    qa_dataset.save_view("mine", qa_dataset.limit(2))
    build_relabel_queue(qa_dataset, eval_key="ev", failures_key="samseg_failures")
    build_relabel_queue(qa_dataset, eval_key="ev", max_samples=1)
    delete_relabel_queue(qa_dataset)
    assert qa_dataset.count_sample_tags() == {"keep": 4}
    assert qa_dataset.list_saved_views() == ["mine"] and queue_records(qa_dataset) == {}


def test_queue_is_recorded_in_dataset_info(qa_dataset):
    build_relabel_queue(
        qa_dataset, eval_key="ev", name="qa", failures_key="samseg_failures", modes=["missing"]
    )
    record = queue_records(qa_dataset)["qa"]
    assert record["views"] == ["qa", "qa-missing"] and record["samples"] == 2


def test_annotation_backend_receives_the_queue_view(qa_dataset, monkeypatch):
    import fiftyone.core.collections as foc
    import fiftyone.core.dataset as fod

    calls = {}
    monkeypatch.setattr(
        foc.SampleCollection, "annotate", lambda self, key, **kw: calls.update(key=key, n=len(self), **kw)
    )
    monkeypatch.setattr(fod.Dataset, "load_annotations", lambda self, key, **kw: calls.update(loaded=key))
    queue = build_relabel_queue(qa_dataset, eval_key="ev", max_samples=2, backend="cvat", anno_key="fix1")
    loaded = load_relabel_results(qa_dataset)
    assert (calls["key"], calls["n"], calls["backend"], calls["label_field"]) == ("fix1", 2, "cvat", "gt")
    assert queue.anno_key == loaded == calls["loaded"] == "fix1"


def test_queue_needs_a_known_evaluation(qa_dataset):
    with pytest.raises(ValueError, match="eval_key: no samseg run .nope."):
        build_relabel_queue(qa_dataset, eval_key="nope")


def test_build_relabel_queue_operator(qa_dataset):
    import fiftyone.operators as foo

    result = foo.get_operator("@samseg/samseg/build_relabel_queue")(
        qa_dataset, eval_key="ev", name="ops", failures_key="samseg_failures", max_samples=2
    )
    assert result["samples"] == 2 and "ops-missing" in result["views"]
    assert qa_dataset.count_sample_tags() == {"ops": 2}


def test_deleting_a_queue_removes_the_annotation_runs_it_sent_and_their_staged_regions(
    qa_dataset, monkeypatch
):
    import fiftyone.core.collections as foc

    from samseg_core.stages import annotation_projects

    def annotate(self, key, **kwargs):  # uploads nothing (the real round trip: tests/test_label_studio.py)
        sent.append((key, kwargs["label_field"]))

    sent = []
    monkeypatch.setattr(foc.SampleCollection, "annotate", annotate)
    monkeypatch.setattr(annotation_projects, "existing_projects", lambda kwargs: None)
    qa_dataset.tag_samples("keep")
    build_relabel_queue(
        qa_dataset,
        eval_key="ev",
        max_samples=2,
        backend="labelstudio",
        annotation_field="pred",
        anno_key="fix1",
    )
    assert sent == [("fix1", "pred_fix1")] and qa_dataset.has_field("pred_fix1")

    assert delete_relabel_queue(qa_dataset)

    assert not qa_dataset.has_field("pred_fix1") and qa_dataset.has_field("pred")
    assert queue_records(qa_dataset) == {} and qa_dataset.count_sample_tags() == {"keep": 4}


def test_label_studio_project_titles_fit_its_50_character_limit_and_stay_distinct():
    from samseg_core.stages.annotation_projects import MAX_TITLE, project_name

    assert project_name("my data", "fix1") == "samseg_my_data_fix1"
    long = [project_name("2026.12.03.18.30.12.123456", key) for key in ("relabel_20261203_183012", "other")]
    assert all(len(title) <= MAX_TITLE for title in long) and long[0] != long[1]
    assert len(long[0] + "_1764787812") <= 50  # with the timestamp FiftyOne adds to a taken title
