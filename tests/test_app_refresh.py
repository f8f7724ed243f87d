"""A run's new fields are shown in the App at once, in the grid's sidebar and in the sample modal's.

Before: stages triggered only ``reload_dataset``, which refreshes the grid's field list; the modal keeps its own
copy (refreshed by the App only when a sample is opened by a click in the grid) and its open sample is not
fetched again, so the fields a run just wrote were missing from an open modal and from one opened by the QA
panel's "Open", until the page was loaded again. The browser checks are in ``tests/test_app_browser.py``; here
the Python side (what is triggered, with which fields) and the JavaScript operator's logic under Node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import fiftyone as fo
import pytest
from fiftyone.operators.executor import ExecutionContext, Executor

from operators.app_refresh import SHOW_NEW_FIELDS

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "dist" / "index.umd.js"
EVALUATE = "@samseg/samseg/evaluate_iou"


def _run_in_app(dataset, operator_uri: str, params: dict) -> list[dict]:
    """Executes an operator as the App does (immediately, with an executor) and returns what it triggered."""
    import fiftyone.operators as foo

    executor = Executor()
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params}, executor=executor)
    operator = foo.get_operator(operator_uri)
    operator.execute(ctx)
    progress = {"console_log", "set_progress"}  # what ctx.set_progress sends
    requests = [r.to_json() for r in executor._requests]
    return [r for r in requests if r["operator_uri"] not in progress]


def test_a_run_reloads_the_dataset_and_lists_exactly_its_new_fields_in_the_modal(scene_dataset):
    scene_dataset.add_sample_field("user_note", fo.StringField)  # there before the run: not new

    triggered = _run_in_app(
        scene_dataset, EVALUATE, {"pred_field": "coarse", "gt_field": "ground_truth", "eval_key": "ev"}
    )

    assert [t["operator_uri"] for t in triggered] == ["reload_dataset", SHOW_NEW_FIELDS]
    new = triggered[1]["params"]["paths"]
    assert new == sorted(name for name in scene_dataset.get_field_schema() if name.startswith("ev_"))
    assert "ev_miou" in new and "user_note" not in new and "coarse" not in new
    group = triggered[1]["params"]["group"]
    assert group["name"] == "samseg" and set(new) <= set(group["paths"])  # where the App is to list them


def test_a_rerun_that_adds_no_field_still_refreshes_the_open_sample(scene_dataset):
    params = {"pred_field": "coarse", "gt_field": "ground_truth", "eval_key": "ev"}
    _run_in_app(scene_dataset, EVALUATE, params)

    triggered = _run_in_app(scene_dataset, EVALUATE, {**params, "overwrite": True})

    assert [t["operator_uri"] for t in triggered] == ["reload_dataset", SHOW_NEW_FIELDS]
    assert triggered[1]["params"]["paths"] == []


def _panel_ctx(dataset, triggered: list, **state):
    from fiftyone.operators.operations import Operations

    ctx = SimpleNamespace(
        dataset=dataset,
        view=dataset.view(),
        params={},
        panel=SimpleNamespace(state=SimpleNamespace(**state), data=SimpleNamespace()),
        trigger=lambda uri, params=None: triggered.append((uri, params)),
    )
    ctx.ops = Operations(ctx)
    return ctx


def test_the_panels_open_gives_the_modal_the_grids_fields_before_opening_the_sample(scene_dataset):
    from operators.qa_panel import QAPanel

    triggered = []
    worst = [{"id": "a", "filename": "1.png", "miou": 0.5}]
    ctx = _panel_ctx(scene_dataset, triggered, worst=worst)
    ctx.params = {"row": 0}

    QAPanel().open_worst_sample(ctx)

    assert [uri for uri, _ in triggered] == [SHOW_NEW_FIELDS, "open_sample"]
    assert triggered[0][1] == {"paths": [], "group": None} and triggered[1][1]["id"] == "a"


def test_a_finished_background_run_shows_the_fields_it_added_since_the_panel_last_looked(
    scene_dataset, monkeypatch
):
    import operators.qa_panel as qa_panel

    run = {"id": "r1", "run": "samseg: evaluate IoU", "state": "running", "queued": "", "details": ""}
    monkeypatch.setattr(qa_panel, "list_background_runs", lambda name: [run])
    triggered = []
    ctx = _panel_ctx(scene_dataset, triggered, eval_key=None, fields=None, background_runs=None)
    qa_panel.QAPanel().on_load(ctx)
    assert "ev_miou" not in ctx.panel.state.fields

    from samseg_core.stages.evaluation import evaluate_iou

    evaluate_iou(scene_dataset, "coarse", "ground_truth", eval_key="ev")  # what the worker wrote meanwhile
    run = {**run, "state": "completed"}
    monkeypatch.setattr(qa_panel, "list_background_runs", lambda name: [run])
    qa_panel.QAPanel().refresh(ctx)

    assert [uri for uri, _ in triggered] == ["reload_dataset", SHOW_NEW_FIELDS]
    assert "ev_miou" in triggered[1][1]["paths"] and "coarse" not in triggered[1][1]["paths"]


def test_the_plugin_ships_its_app_side_operator_and_fiftyone_serves_it():
    import fiftyone.plugins as fop
    import yaml

    manifest = yaml.safe_load((REPO_ROOT / "fiftyone.yml").read_text())
    plugin = fop.get_plugin(manifest["name"])

    assert plugin.has_js and Path(plugin.js_bundle_path).resolve() == BUNDLE.resolve()
    assert SHOW_NEW_FIELDS == f"{manifest['name']}/show_new_fields"
    assert f'PLUGIN = "{manifest["name"]}"' in BUNDLE.read_text()


# ------------------------------------------------------------------------ the JavaScript operator under Node

# Stand-ins for the App's globals: Recoil state as a dict, the operator classes, the GraphQL fetch. The grid's
# field list becomes LATER 300 ms after the operator starts (the App reloading the dataset).
_NODE_HARNESS = r"""
const state = {
  grid: INITIAL, modal: INITIAL, modalSelector: OPEN_SAMPLE, datasetName: "ds", view: [{_cls: "stage"}],
};
const fetched = [], updated = [];
let operator = null;
const cb = {snapshot: {getPromise: async (key) => state[key]}, set: (key, value) => { state[key] = value; }};
globalThis.window = {
  recoil: {useRecoilCallback: (make) => (...args) => make(cb)(...args)},
  __foo__: {
    Operator: class { constructor(plugin) { this.plugin = plugin; } },
    OperatorConfig: class { constructor(config) { Object.assign(this, config); } },
    registerOperator: (cls, plugin) => { operator = new cls(plugin); },
  },
  __fos__: {
    sidebarGroupsDefinition: (modal) => (modal ? "modal" : "grid"),
    modalSelector: "modalSelector", datasetName: "datasetName", view: "view",
    useUpdateSamples: () => (pairs) => updated.push(pairs),
  },
  __fou__: {getFetchFunction: () => async (method, path, body) => {
    fetched.push({method, path, variables: body.variables});
    return {data: {sample: {sample: {_id: body.variables.filter.id, new_field: 0.5}}}};
  }},
};
if (UNSUPPORTED) delete window.__fos__.sidebarGroupsDefinition;
if (FETCH_FAILS) window.__fou__.getFetchFunction = () => async () => { throw new Error("server gone"); };
require(BUNDLE);
setTimeout(() => { state.grid = LATER; }, 300);
const started = Date.now();
operator.execute({params: PARAMS, hooks: operator.useHooks()}).then((result) => {
  console.log(JSON.stringify({
    result, grid: state.grid, modal: state.modal, fetched, updated, waited_ms: Date.now() - started,
    uri: operator.plugin + "/" + operator.config.name, unlisted: operator.config.unlisted,
  }));
});
"""

BEFORE_RUN = [{"name": "tags", "paths": []}, {"name": "labels", "paths": ["gt"]}]
AFTER_RUN = [  # where the App's reload puts new fields: its default groups
    {"name": "tags", "paths": []},
    {"name": "labels", "paths": ["gt"]},
    {"name": "primitives", "paths": ["user_float", "new_field"]},
]


def _run_bundle(
    params: dict,
    open_sample: dict | None,
    initial=BEFORE_RUN,
    later=AFTER_RUN,
    unsupported=False,
    fetch_fails=False,
) -> dict:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is missing; the CI machine has Node.js")
        pytest.skip("node is not installed")
    script = _NODE_HARNESS
    values = {"OPEN_SAMPLE": open_sample, "PARAMS": params, "BUNDLE": str(BUNDLE), "INITIAL": initial}
    values.update({"UNSUPPORTED": unsupported, "FETCH_FAILS": fetch_fails, "LATER": later})
    for name, value in values.items():
        script = script.replace(name, json.dumps(value))
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_js_operator_waits_for_the_new_field_then_lists_it_in_samsegs_group_in_grid_and_modal():
    group = {"name": "samseg", "paths": ["new_field", "deleted_field"]}
    out = _run_bundle({"paths": ["new_field"], "group": group}, {"id": "s1", "groupId": None})

    assert out["uri"] == SHOW_NEW_FIELDS and out["unlisted"] is True
    assert out["waited_ms"] >= 250  # it did not act on the stale list
    expected = [
        {"name": "tags", "paths": []},
        {"name": "labels", "paths": ["gt"]},
        {
            "name": "samseg",
            "paths": ["new_field"],
        },  # created after labels; a field the grid lacks is left out
        {"name": "primitives", "paths": ["user_float"]},  # the user's field stays
    ]
    assert out["grid"] == expected and out["modal"] == expected
    assert out["result"] == {"listed": ["new_field"], "refetched": True, "supported": True}


def test_the_js_operator_appends_to_an_existing_samseg_group_and_moves_nothing_else():
    initial = [
        {"name": "labels", "paths": ["gt"]},
        {"name": "mine", "paths": ["old"]},
        {"name": "samseg", "paths": ["a"]},
    ]
    later = [*initial, {"name": "primitives", "paths": ["new_field"]}]
    group = {"name": "samseg", "paths": ["a", "new_field"]}  # "old" is in the user's own group: not samseg's

    out = _run_bundle({"paths": ["new_field"], "group": group}, None, initial, later)

    assert out["grid"] == [
        *initial[:2],
        {"name": "samseg", "paths": ["a", "new_field"]},
        {"name": "primitives", "paths": []},
    ]
    assert out["modal"] == out["grid"]


def test_the_js_operator_fetches_the_open_sample_again_and_hands_it_to_the_app():
    out = _run_bundle({"paths": ["new_field"]}, {"id": "s1", "groupId": None})

    assert out["fetched"] == [
        {"method": "POST", "path": "/graphql", "variables": {"dataset": "ds", "view": [{"_cls": "stage"}],
                                                            "filter": {"id": "s1"}}}
    ]  # fmt: skip
    assert out["updated"] == [[["s1", {"_id": "s1", "new_field": 0.5}]]]
    assert out["modal"] == AFTER_RUN  # no group given: the grid's list as it is


def test_the_js_operator_gives_up_waiting_after_its_timeout_and_fetches_nothing_without_an_open_sample():
    out = _run_bundle({"paths": ["never_listed"], "timeout_ms": 100}, None)

    assert out["waited_ms"] < 300  # before the grid changes: the timeout ended the wait
    assert out["modal"] == BEFORE_RUN  # the grid's list at that moment
    assert out["fetched"] == [] and out["updated"] == []
    assert out["result"] == {"listed": [], "refetched": False, "supported": True}


def test_in_an_app_whose_packages_differ_the_js_operator_is_still_there_and_does_nothing():
    out = _run_bundle({"paths": ["new_field"]}, {"id": "s1", "groupId": None}, unsupported=True)

    assert out["uri"] == SHOW_NEW_FIELDS  # Python's trigger finds it: no error in the App
    assert out["result"] == {"listed": [], "refetched": False, "supported": False}
    assert out["grid"] == BEFORE_RUN and out["modal"] == BEFORE_RUN and out["fetched"] == []


def test_when_the_open_sample_cannot_be_fetched_again_the_fields_are_still_listed_and_nothing_raises():
    out = _run_bundle({"paths": ["new_field"]}, {"id": "s1", "groupId": None}, fetch_fails=True)

    assert out["modal"] == AFTER_RUN and out["updated"] == []
    assert out["result"] == {"listed": ["new_field"], "refetched": False, "supported": True}
