"""Relabel queue round trip through a real Label Studio server: send, correct as an annotator would, load, re-evaluate.

The server (label-studio 1.23.2, its own venv) and label-studio-sdk 2.1.2 (in samseg's venv) come from
``scripts/install_label_studio.sh``; CI runs it, and there a missing install fails instead of skipping.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from samseg_core.testing.label_studio import (
    LabelStudioServer,
    api,
    label_studio_executable,
    project_tasks,
    semantic_brushes,
    submit_annotation,
)

pytestmark = pytest.mark.slow

BAD = (1, 3, 4)  # samples whose predictions are poor: the queue
CORRECTED = (1, 4)  # the ones the annotator corrects; sample 3's task is left as it came


def _require_label_studio() -> str:
    executable = label_studio_executable()
    missing = []
    if not (executable.parent.parent / ".samseg-ready").exists():
        missing.append(f"the Label Studio server ({executable})")
    try:
        import label_studio_sdk

        label_studio_sdk.Client  # noqa: B018  (FiftyOne's backend needs the legacy client)
    except ImportError:
        missing.append("label-studio-sdk in samseg's venv")
    if missing:
        message = f"{' and '.join(missing)} not installed (bash scripts/install_label_studio.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must install it")
        pytest.skip(message)
    return str(executable)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on a free port of 127.0.0.1 with an admin user and API token; stopped afterwards."""
    executable = _require_label_studio()
    with LabelStudioServer(executable, tmp_path_factory.mktemp("label-studio")) as server:
        yield server


@pytest.fixture
def review_dataset(dataset, tmp_path):
    """6 synthetic scenes with ground truth ``gt`` and a prediction ``pred`` (poor on samples ``BAD``),
    evaluated as ``ev``."""
    import fiftyone as fo

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.stages.evaluation import evaluate_iou
    from samseg_core.testing import degrade_prediction, make_scenes, write_scene_images

    scenes = make_scenes(6, seed=0, size=(96, 112))
    paths = write_scene_images(scenes, tmp_path / "images")
    samples = []
    for i, (scene, path) in enumerate(zip(scenes, paths)):
        gt = scene.semantic.astype(np.uint8)
        pred = degrade_prediction(scene, seed=i).astype(np.uint8)
        if i in BAD:
            pred[48:] = 0  # the lower half missed
        samples.append(
            fo.Sample(filepath=str(path), gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=pred))
        )
    dataset.add_samples(samples)
    merge_mask_targets(dataset, "gt", scenes[0].class_names)
    merge_mask_targets(dataset, "pred", scenes[0].class_names)
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    return dataset


def _masks(dataset, field):
    return {sid: seg.get_mask().tobytes() for sid, seg in zip(dataset.values("id"), dataset.values(field))}


def _annotate_as_a_person(label_studio, results, dataset, sample_ids):
    """Submits, for the tasks of ``sample_ids``, one brush per class painted exactly over the ground truth."""
    project = api(label_studio.url, label_studio.token, "GET", f"/api/projects/{results.project_id}")
    (from_name, control), *_ = project["parsed_label_config"].items()
    class_names = dataset.mask_targets["gt"]
    gt = dict(zip(dataset.values("id"), dataset.values("gt")))
    for task_id, sample_id in results.uploaded_tasks.items():
        if sample_id in sample_ids:
            brushes = semantic_brushes(
                gt[sample_id].get_mask(), class_names, from_name, control["to_name"][0]
            )
            submit_annotation(label_studio.url, label_studio.token, task_id, brushes)


def test_corrections_made_in_label_studio_raise_iou_and_touch_nothing_else(label_studio, review_dataset):
    from samseg_core.stages.curation import build_relabel_queue, load_relabel_results
    from samseg_core.stages.evaluation import evaluate_iou

    dataset = review_dataset
    ids = dataset.values("id")
    miou_before = dict(zip(ids, dataset.values("ev_miou")))
    assert all(miou_before[ids[i]] < 0.7 for i in BAD), miou_before
    assert all(miou_before[ids[i]] >= 0.7 for i in range(6) if i not in BAD), miou_before
    pred_before, gt_before = _masks(dataset, "pred"), _masks(dataset, "gt")
    pred_label_ids = dict(zip(ids, dataset.values("pred.id")))

    queue = build_relabel_queue(
        dataset, eval_key="ev", miou_below=0.7, backend="labelstudio", annotation_field="pred",
        annotate_kwargs={"url": label_studio.url, "api_key": label_studio.token},
    )  # fmt: skip
    assert sorted(queue.sample_ids) == sorted(ids[i] for i in BAD)

    results = dataset.load_annotation_results(queue.anno_key)
    tasks = project_tasks(label_studio.url, label_studio.token, results.project_id)
    assert len(tasks) == len(BAD)
    # the annotator starts from the current labels: one pre-annotated brush per class present
    for task in tasks:
        pred = dict(zip(ids, dataset.values("pred")))[results.uploaded_tasks[task["id"]]].get_mask()
        (prediction,) = task["predictions"]
        assert sorted(r["value"]["brushlabels"][0] for r in prediction["result"]) == sorted(
            dataset.mask_targets["pred"][int(v)] for v in np.unique(pred) if v != 0
        )

    corrected = {ids[i] for i in CORRECTED}
    _annotate_as_a_person(label_studio, results, dataset, corrected)
    assert load_relabel_results(dataset, "relabel") == queue.anno_key
    evaluate_iou(dataset, "pred", "gt", eval_key="ev_after")

    miou_after = dict(zip(ids, dataset.values("ev_after_miou")))
    pred_after, gt_after = _masks(dataset, "pred"), _masks(dataset, "gt")
    for sid in corrected:
        assert miou_before[sid] < 0.7 and miou_after[sid] > 0.999, (miou_before[sid], miou_after[sid])
        assert pred_after[sid] == gt_before[sid]  # the corrected labels are in the annotation field
    assert dict(zip(ids, dataset.values("pred.id"))) == pred_label_ids
    unchanged = [sid for sid in ids if sid not in corrected]  # outside the queue, and the task left alone
    assert {sid: pred_after[sid] for sid in unchanged} == {sid: pred_before[sid] for sid in unchanged}
    assert {sid: miou_after[sid] for sid in unchanged} == {sid: miou_before[sid] for sid in unchanged}
    assert gt_after == gt_before
    assert dataset.count_sample_tags() == {"relabel": len(BAD)}


def test_queue_whose_upload_failed_can_be_sent_again(label_studio, review_dataset):
    from samseg_core.stages.curation import build_relabel_queue

    dataset = review_dataset
    fields = set(dataset.get_field_schema())
    with pytest.raises(Exception, match="401|[Aa]uthenticat"):
        build_relabel_queue(
            dataset, eval_key="ev", miou_below=0.7, backend="labelstudio", annotation_field="pred",
            anno_key="first_try", annotate_kwargs={"url": label_studio.url, "api_key": "0" * 40},
        )  # fmt: skip
    assert set(dataset.get_field_schema()) == fields and dataset.list_annotation_runs() == []

    queue = build_relabel_queue(
        dataset, eval_key="ev", miou_below=0.7, backend="labelstudio", annotation_field="pred",
        anno_key="first_try", annotate_kwargs={"url": label_studio.url, "api_key": label_studio.token},
    )  # fmt: skip
    assert queue.anno_key == "first_try" and dataset.list_annotation_runs() == ["first_try"]
    assert dataset.count_sample_tags() == {"relabel": len(BAD)}


def _project_titles(label_studio) -> dict[int, str]:
    projects = api(label_studio.url, label_studio.token, "GET", "/api/projects?page_size=1000")
    return {p["id"]: p["title"] for p in (projects["results"] if isinstance(projects, dict) else projects)}


def test_an_upload_that_fails_after_the_project_was_made_leaves_no_project_and_spares_the_users(
    label_studio, review_dataset, monkeypatch
):
    import fiftyone.utils.labelstudio as fouls
    from label_studio_sdk import Client

    from samseg_core.stages.annotation_projects import project_name
    from samseg_core.stages.curation import build_relabel_queue

    dataset, title = review_dataset, project_name(review_dataset.name, "broken")
    kwargs = {"url": label_studio.url, "api_key": label_studio.token}
    Client(label_studio.url, label_studio.token).start_project(title=title)  # the user's, with samseg's title
    before = _project_titles(label_studio)

    def upload_breaks(self, project, tasks, predictions):
        raise RuntimeError("the server went away during the upload")

    monkeypatch.setattr(fouls.LabelStudioAnnotationAPI, "_upload_tasks", upload_breaks)
    with pytest.raises(RuntimeError, match="went away"):
        build_relabel_queue(
            dataset, eval_key="ev", miou_below=0.7, backend="labelstudio", annotation_field="pred",
            anno_key="broken", annotate_kwargs=kwargs,
        )  # fmt: skip

    assert (
        _project_titles(label_studio) == before
    )  # samseg's "<title>_<timestamp>" project is gone, the user's stays
    assert dataset.list_annotation_runs() == [] and not dataset.has_field("pred_broken")


def test_deleting_a_sent_queue_with_cleanup_removes_its_run_staged_field_and_project(
    label_studio, review_dataset
):
    from samseg_core.stages.annotation_projects import project_name
    from samseg_core.stages.curation import build_relabel_queue, delete_relabel_queue

    dataset = review_dataset
    before = _project_titles(label_studio)
    queue = build_relabel_queue(
        dataset, eval_key="ev", miou_below=0.7, backend="labelstudio", annotation_field="pred",
        anno_key="sent", annotate_kwargs={"url": label_studio.url, "api_key": label_studio.token},
    )  # fmt: skip
    project_id = dataset.load_annotation_results(queue.anno_key).project_id
    assert _project_titles(label_studio)[project_id] == project_name(dataset.name, "sent")

    with pytest.raises(Exception, match="401|[Aa]uthenticat"):  # the server refuses: nothing is removed
        delete_relabel_queue(dataset, cleanup=True, url=label_studio.url, api_key="0" * 40)
    assert dataset.list_annotation_runs() == ["sent"] and dataset.has_field("pred_sent")
    assert project_id in _project_titles(label_studio)

    assert delete_relabel_queue(dataset, cleanup=True, url=label_studio.url, api_key=label_studio.token)

    assert _project_titles(label_studio) == before
    assert (
        dataset.list_annotation_runs() == []
        and not dataset.has_field("pred_sent")
        and dataset.has_field("pred")
    )
    assert dataset.count_sample_tags() == {}


def test_a_cleanup_the_server_refuses_half_way_leaves_the_queue_in_the_dataset(label_studio, review_dataset):
    from samseg_core.stages.curation import build_relabel_queue, delete_relabel_queue, queue_records

    dataset = review_dataset
    kwargs = {"url": label_studio.url, "api_key": label_studio.token}
    for key in ("first", "second"):  # the queue sent twice: two annotation runs
        build_relabel_queue(
            dataset, eval_key="ev", miou_below=0.7, backend="labelstudio", annotation_field="pred",
            anno_key=key, annotate_kwargs=kwargs,
        )  # fmt: skip
    second = dataset.load_annotation_results("second").project_id
    api(label_studio.url, label_studio.token, "DELETE", f"/api/projects/{second}/")  # gone on the server

    with pytest.raises(Exception):  # noqa: B017  (the server's 404, whatever the SDK wraps it in)
        delete_relabel_queue(dataset, cleanup=True, **kwargs)

    assert sorted(dataset.list_annotation_runs()) == ["first", "second"]
    assert (
        dataset.has_field("pred_first")
        and dataset.has_field("pred_second")
        and "relabel" in queue_records(dataset)
    )
