"""Real-browser session test: the FiftyOne App (server on loopback) driven by headless Chromium through Playwright.

Every samseg operator is opened from the operator browser (backtick, search "samseg"), filled in as a user
would (typing into inputs, picking dropdown values; tiny random models saved locally where a model is needed),
executed, and its run summary and new fields checked without reloading the page. Then: an inline form error, a
run scheduled in the background and followed in the QA panel, and a QA session on a 30-sample dataset in a
stock App (evaluate, failure modes, relabel queue, the panel's worst-sample rows and queue buttons).
Screenshots are saved in each test's ``tmp_path``.

Run alone: ``source scripts/env.sh && python -m pytest -q -m browser tests/test_app_browser.py``. Needs
Debian's ``chromium`` (``bash scripts/install_browser.sh``); skipped without it unless ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 90_000
SCENE_SIZE = (96, 96)  # the smallest synthetic scene
SAMSEG_GROUP = "SAMSEG"  # the sidebar group samseg's fields are listed in, as the App names it

# ------------------------------------------------------------------------------------- servers and browser


def _require_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must install it (scripts/install_browser.sh)")
    pytest.skip(f"{CHROMIUM} is not installed (bash scripts/install_browser.sh)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"App server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"App server not answering at {url} after {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def _app_server(log_dir: Path, *, background_runs: bool) -> Iterator[str]:
    """The App server on a free loopback port, on this session's database and plugins dir; with
    ``background_runs`` it can queue delegated runs (``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS``), else it is a
    stock App."""
    env = os.environ.copy()
    env.pop("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", None)
    if background_runs:
        env["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
    port = _free_port()
    log = log_dir / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/", 90, server, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(server.pid, signal.SIGKILL)  # the server ignores SIGTERM
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, small):
    """A stock App (no background runs)."""
    with _app_server(tmp_path_factory.mktemp("app-server"), background_runs=False) as url:
        yield url


@pytest.fixture
def background_app_url(tmp_path_factory, small):
    """An App that can schedule background runs (started only for the test that needs it)."""
    with _app_server(tmp_path_factory.mktemp("app-server-bg"), background_runs=True) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (Playwright's own browsers are never downloaded)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


# ------------------------------------------------------------------------------------- datasets and models


def _scene_dataset(name: str, folder: Path, num_samples: int):
    """A persistent dataset (the App server is another process) of synthetic scenes with ``ground_truth``,
    ``baseline`` (a coarse "own model" prediction that misses objects in some samples) and ``coarse`` (another
    model's prediction)."""
    import fiftyone as fo

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.testing import degrade_prediction, make_scenes, write_scene_images

    scenes = make_scenes(num_samples, seed=0, size=SCENE_SIZE)
    dataset = fo.Dataset(f"{name}-{uuid.uuid4().hex[:8]}", persistent=True)
    dataset.add_samples(
        fo.Sample(
            filepath=str(path),
            ground_truth=fo.Segmentation(mask=scene.semantic.astype(np.uint8)),
            baseline=fo.Segmentation(
                mask=degrade_prediction(scene, seed=i, missing_instances=i % 3).astype(np.uint8)
            ),
            coarse=fo.Segmentation(
                mask=degrade_prediction(scene, seed=100 + i, blur_radius=2).astype(np.uint8)
            ),
        )
        for i, (scene, path) in enumerate(zip(scenes, write_scene_images(scenes, folder)))
    )
    for field in ("ground_truth", "baseline", "coarse"):
        merge_mask_targets(dataset, field, scenes[0].class_names)
    return dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """3 samples, with an IoU run, a failure run (what the relabel queue ranks by) and a fusion calibration (what
    apply_fusion applies) made from Python."""
    import fiftyone as fo

    from samseg_core.stages.evaluation import evaluate_iou
    from samseg_core.stages.failure_modes import detect_failures
    from samseg_core.stages.fusion import calibrate_fusion

    dataset = _scene_dataset("samseg-browser", tmp_path_factory.mktemp("small"), 3)
    evaluate_iou(dataset, "baseline", "ground_truth", eval_key="setup_iou")
    detect_failures(dataset, "baseline", "ground_truth", eval_key="setup_failures")
    calibrate_fusion(
        dataset, eval_key="setup_fusion", methods=("vote",), masks="slic", min_support=1, device="cpu"
    )
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


@pytest.fixture(scope="module")
def thirty(tmp_path_factory):
    """30 samples, nothing computed yet: a QA session starts here."""
    import fiftyone as fo

    dataset = _scene_dataset("samseg-browser-30", tmp_path_factory.mktemp("thirty"), 30)
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Tiny random-init models of the real architectures, saved where a user would keep their own: a
    SegFormer, a transformers SAM, an open_clip CLIP and a CLIPSeg (directories typed into the forms)."""
    from samseg_core.testing import save_tiny_segformer
    from samseg_core.testing import tiny_engine_models as tiny
    from samseg_core.testing.scenes import class_names_for
    from samseg_core.testing.tiny_sam_family import save_tiny_transformers_sam

    root = tmp_path_factory.mktemp("models")
    return {
        "segformer": str(save_tiny_segformer(root / "segformer", class_names_for(6))),
        "sam": str(save_tiny_transformers_sam(root / "sam")),
        "clip": str(tiny.save_tiny_clip(root / "clip")),
        "clipseg": str(tiny.save_tiny_clipseg(root / "clipseg")),
    }


def _poll_dataset(dataset, field: str, timeout: float = 60.0) -> list:
    """The values of ``field`` once every sample has one (the App writes from another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dataset.reload()
        if dataset.has_field(field) and dataset.count(field) == len(dataset):
            return dataset.values(field)
        time.sleep(0.5)
    raise AssertionError(f"field '{field}' did not appear in the database within {timeout}s")


@contextlib.contextmanager
def _delegated_worker(log_dir: Path) -> Iterator[None]:
    """A ``fiftyone delegated launch`` worker on this session's database, as the README tells a user to start."""
    env = {**os.environ, "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true"}
    with open(log_dir / "worker.log", "wb") as out:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "fiftyone"), "delegated", "launch"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


# ------------------------------------------------------------------------------------- driving the App

# The sidebar group a field's entry is listed under (entries are ordered by their position on screen).
_SIDEBAR_GROUP_OF = """(path) => {
  const entries = [...document.querySelectorAll(
      '[data-cy^="sidebar-group-entry-"], [data-cy^="sidebar-field-container-"]')]
    .filter((e) => !e.closest('#modal'))
    .map((e) => [e.getBoundingClientRect().top, e.getAttribute('data-cy')])
    .sort((a, b) => a[0] - b[0]);
  let group = null;
  for (const [, cy] of entries) {
    if (cy.startsWith('sidebar-group-entry-')) group = cy.slice('sidebar-group-entry-'.length);
    else if (cy === 'sidebar-field-container-' + path) return group;
  }
  return null;
}"""


def _open_dataset(page, app_url: str, dataset) -> None:
    """Loads the dataset page (once more when the first load stalls on "Pixelating..."), with no sample
    modal left open by an earlier test and the App's promotion popover dismissed."""
    page.goto(f"{app_url}/datasets/{dataset.name}", wait_until="domcontentloaded")
    samples_count = page.get_by_text(f"{len(dataset)} samples")
    try:
        samples_count.wait_for(timeout=30_000)
    except Exception:
        page.reload(wait_until="domcontentloaded")
        samples_count.wait_for()
    if page.locator("#modal.modalon").count():
        _close_modal(page)
    with contextlib.suppress(Exception):
        page.get_by_text("Dismiss", exact=True).first.click(timeout=3_000)


def _close_modal(page) -> None:
    page.mouse.click(5, 500)  # the backdrop beside the sample
    page.locator("#modal.modalon").wait_for(state="detached")


def _open_first_sample(page) -> str:
    """Opens the grid's first sample in the modal (a click, as a user would); returns its id."""
    looker = page.locator("[data-cy=looker]").first
    box = looker.bounding_box()
    # away from the selection checkbox and the label chips (small thumbnails when a panel is open)
    looker.click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.7})
    page.locator("#modal.modalon").wait_for()
    page.wait_for_url(re.compile(r"[?&]id="))
    return re.search(r"[?&]id=([0-9a-f]+)", page.url).group(1)


def _modal_value(page, path: str) -> str | None:
    """The value the open modal's sidebar shows for the primitive field ``path`` (None when it is not listed).

    The modal lists a primitive as its value on one line and its path on the next.
    """
    lines = [line.strip() for line in page.locator("#modal").inner_text().splitlines()]
    return lines[lines.index(path) - 1] if path in lines[1:] else None


def _wait_modal_value(page, path: str, expected: float, timeout: float = 30.0) -> None:
    """Waits until the open modal shows ``path`` with ``expected`` (as the App rounds it, to 3 decimals)."""
    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline:
        shown = _modal_value(page, path)
        with contextlib.suppress(TypeError, ValueError):
            if abs(float(shown) - expected) < 6e-4:
                return
        time.sleep(0.25)
    raise AssertionError(f"the modal shows {path} = {shown!r}, expected {expected:.3f}")


def _open_operator(page, label: str) -> None:
    """Opens an operator's form from the operator browser: backtick, search "samseg", click its label; fails
    with the App's message when the form cannot be shown. Works from the grid and from the sample modal."""
    if not page.locator("#modal.modalon").count():
        page.get_by_text(re.compile(r"^\d+ samples?$")).first.click()  # focus outside inputs and the grid
    page.keyboard.press("`")
    page.get_by_placeholder("Search operations by name...").fill("samseg")
    page.get_by_text(label, exact=True).click()
    error = page.get_by_text("Error occurred during operator execution")
    page.locator("[role=dialog] form").or_(error).first.wait_for()
    if error.count():
        pytest.fail(
            f"the App cannot show the form of '{label}': {page.locator('[role=dialog]').inner_text()}"
        )


def _form_field(page, label: str):
    """The form row of the input labelled ``label`` (its label, help text and input)."""
    rows = page.locator("[role=dialog] .MuiGrid-item").filter(has=page.get_by_text(label, exact=True))
    return rows.last  # the innermost row holding the label


def _type(page, label: str, value: str) -> None:
    """Types ``value`` into a text or number input (replacing what is there) and leaves it."""
    box = _form_field(page, label).locator("input").first
    box.fill(value)
    box.press("Tab")


def _pick(page, label: str, value: str) -> None:
    """Picks ``value`` in a dropdown."""
    _form_field(page, label).locator("[role=combobox], [role=button]").first.click()
    page.get_by_role("option", name=value, exact=True).click()


def _pick_more(page, label: str, values: list[str]) -> None:
    """Adds ``values`` to a multiple-choice dropdown."""
    for value in values:
        _form_field(page, label).locator("input[role=combobox]").first.click()
        page.get_by_role("option", name=value, exact=True).click()


def _add_items(page, label: str, values: list[str]) -> None:
    """Adds one item per value to a list input ("Add <label>", then type into the new item)."""
    for value in values:
        _form_field(page, label).get_by_role("button", name=f"Add {label[0].lower()}{label[1:]}").click()
        item = _form_field(page, label).locator("input").last
        item.fill(value)
        item.press("Tab")


def _execute(page) -> str:
    """Clicks Execute and returns the run summary's text once it is shown."""
    from playwright.sync_api import expect

    execute = page.get_by_role("button", name="Execute")
    time.sleep(0.5)  # the last input's resolve_input round trip starts
    expect(execute).to_be_enabled()
    execute.click()
    page.get_by_text("Processed:").first.wait_for()
    return page.locator("[role=dialog]").inner_text()


def _close_summary(page) -> None:
    page.get_by_role("button", name="Close").click()
    page.locator("[role=dialog]").wait_for(state="detached")


def _wait_in_sidebar(page, field: str) -> None:
    """Waits until ``field`` is listed in the grid's sidebar (the App reloaded the dataset after the run)."""
    page.wait_for_function(f"(path) => ({_SIDEBAR_GROUP_OF})(path) !== null", arg=field)


def _wait_in_samseg_group(page, fields: list[str]) -> None:
    """Waits until the grid's sidebar lists every one of ``fields`` in the samseg group (a run's new fields
    are listed in a default group first, then moved by samseg's App-side operator)."""
    page.wait_for_function(
        f"(paths) => paths.every((p) => ({_SIDEBAR_GROUP_OF})(p) === '{SAMSEG_GROUP}')", arg=fields
    )


def _sidebar_group(page, field: str) -> str | None:
    return page.evaluate(_SIDEBAR_GROUP_OF, field)


def _samseg_group_paths(dataset) -> list[str]:
    dataset.reload()
    groups = dataset.app_config.sidebar_groups or []
    return next((list(g.paths) for g in groups if g.name == "samseg"), [])


def _open_qa_panel(page) -> None:
    page.get_by_title("New panel").first.click()
    page.get_by_text("samseg QA", exact=True).first.click()
    page.get_by_role("button", name="Refresh").wait_for()


def _refresh_until(page, shown, timeout: float = 120.0) -> None:
    """Clicks the QA panel's Refresh until ``shown`` is visible (a background run changes state meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        page.get_by_role("button", name="Refresh").click()
        try:
            shown.wait_for(timeout=2_000)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


def _open_saved_views_menu(page) -> None:
    page.get_by_text("Unsaved view", exact=True).first.click()


def _save(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"))


# ------------------------------------------------------------------------------------- one plan per operator


@dataclass(frozen=True)
class FormPlan:
    """How a user fills one operator's form, and what the run must write."""

    label: str  # the operator's label in the operator browser
    fill: Callable[..., None]  # fill(page, models)
    fields: tuple[str, ...] = ()  # sample fields the run writes (each on every sample)
    saved_views: tuple[str, ...] = ()  # saved views the run creates
    summary: str = ""  # what its run summary must mention (default: the first field)

    def mentions(self) -> str:
        return self.summary or self.fields[0]


def _fill_baseline(page, models) -> None:
    _type(page, "Semantic segmenter", models["segformer"])
    _type(page, "Output segmentation field", "ui_baseline")
    _type(page, "Confidence heatmap field (optional)", "ui_baseline_conf")


def _fill_refinement(page, models) -> None:
    _type(page, "SAM model", models["sam"])
    _pick(page, "Baseline field", "coarse")
    _type(page, "Output segmentation field", "ui_refined")
    _pick_more(page, "Prompt types", ["extreme_points"])
    _pick(page, "Granularity", "region")


def _fill_prompt_study(page, models) -> None:
    _type(page, "SAM model", models["sam"])
    _pick(page, "Baseline field", "coarse")
    _type(page, "Output field prefix", "ui_study_")


def _fill_voting(page, models) -> None:
    _pick(page, "Mask source", "slic")
    _type(page, "Output segmentation field", "ui_ssa")
    _type(page, "Per-mask Detections field (optional)", "ui_ssa_masks")


def _fill_engine(page, models) -> None:
    _type(page, "Output detections field", "ui_engine")
    _type(page, "Merged segmentation field (optional)", "ui_engine_seg")
    _pick_more(page, "Close-set segmentation fields", ["baseline"])
    _type(page, "CLIP model (optional)", models["clip"])
    _type(page, "CLIPSeg model (optional)", models["clipseg"])
    _add_items(page, "Fixed vocabulary", ["car", "person"])
    _type(page, "Minimum mask area", "1")


def _fill_evaluation(page, models) -> None:
    _pick(page, "Prediction field", "baseline")
    _pick_more(page, "Also compare", ["coarse"])
    _type(page, "Evaluation key", "ui_iou")


def _fill_agreement(page, models) -> None:
    _pick(page, "Prediction field", "coarse")
    _type(page, "Evaluation key", "ui_agree")


def _fill_failures(page, models) -> None:
    _pick(page, "Prediction field", "coarse")
    _type(page, "Failure run key", "ui_failures")


def _fill_calibration(page, models) -> None:
    _pick(page, "Mask source", "slic")
    _type(page, "Calibration key", "ui_fusion")
    _type(page, "Minimum support (px)", "1")


def _fill_apply_fusion(page, models) -> None:
    _pick(page, "Calibration", "setup_fusion")
    _pick(page, "Mask source", "slic")
    _type(page, "Output segmentation field", "ui_fused")


def _fill_queue(page, models) -> None:
    _pick(page, "Rank by evaluation", "setup_iou")
    _pick(page, "Failure run", "setup_failures")
    _type(page, "Name", "ui_queue")
    _type(page, "Max samples", "2")


PLANS = {
    "run_baseline": FormPlan(
        "samseg: run baseline segmentation", _fill_baseline, ("ui_baseline", "ui_baseline_conf")
    ),
    "refine_with_sam": FormPlan("samseg: refine with SAM", _fill_refinement, ("ui_refined",)),
    "prompt_study": FormPlan(
        "samseg: prompt study",
        _fill_prompt_study,
        ("ui_study_box", "ui_study_points_box"),
        summary="points_box",
    ),
    "semantic_voting": FormPlan("samseg: semantic voting (SSA)", _fill_voting, ("ui_ssa", "ui_ssa_masks")),
    "open_vocab_labels": FormPlan(
        "samseg: open-vocabulary labels (SSA-engine)", _fill_engine, ("ui_engine", "ui_engine_seg")
    ),
    "evaluate_iou": FormPlan(
        "samseg: evaluate IoU", _fill_evaluation, ("ui_iou_miou", "ui_iou_boundary_iou")
    ),
    "agreement_iou": FormPlan(
        "samseg: agreement without ground truth", _fill_agreement, ("ui_agree_miou", "ui_agree_disagreement")
    ),
    "detect_failures": FormPlan(
        "samseg: detect failure modes", _fill_failures, ("ui_failures", "ui_failures_missing")
    ),
    "build_relabel_queue": FormPlan(
        "samseg: build relabel queue",
        _fill_queue,
        saved_views=("ui_queue", "ui_queue-missing"),
        summary="ui_queue",
    ),
    "calibrate_fusion": FormPlan("samseg: calibrate fusion", _fill_calibration, ("ui_fusion_split",)),
    "apply_fusion": FormPlan("samseg: apply fusion", _fill_apply_fusion, ("ui_fused",)),
}


def test_every_stage_operator_has_a_form_plan_here():
    from samseg_core.stages.registry import stage_specs

    missing = [spec.name for spec in stage_specs() if spec.name not in PLANS]
    assert not missing, f"add a FormPlan to PLANS for {missing}"
    assert all(PLANS[spec.name].label == f"samseg: {spec.label}" for spec in stage_specs())


# ------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("stage", list(PLANS))
def test_an_operator_runs_from_its_form_and_its_results_appear_without_a_reload(
    stage, page, app_url, small, models, tmp_path
):
    plan = PLANS[stage]
    _open_dataset(page, app_url, small)
    _open_operator(page, plan.label)
    plan.fill(page, models)
    _save(page, tmp_path, f"{stage}_form")

    summary = _execute(page)

    assert re.search(r"Failed:\s*0\b", summary), summary
    assert plan.mentions() in summary, summary
    _save(page, tmp_path, f"{stage}_summary")
    _close_summary(page)
    for field in plan.fields:
        _wait_in_sidebar(page, field)
        assert _poll_dataset(small, field)
    assert set(plan.fields) <= set(_samseg_group_paths(small))  # stored for the App's next load
    _wait_in_samseg_group(page, list(plan.fields))  # and listed there now
    if plan.saved_views:
        _open_saved_views_menu(page)
        for view in plan.saved_views:
            page.get_by_text(view, exact=True).first.wait_for()
        assert set(plan.saved_views) <= set(small.list_saved_views())
    _save(page, tmp_path, f"{stage}_after")


def test_an_invalid_input_is_marked_inline_and_execute_waits_until_it_is_fixed(page, app_url, small):
    from playwright.sync_api import expect

    _open_dataset(page, app_url, small)
    _open_operator(page, "samseg: evaluate IoU")
    key = _form_field(page, "Evaluation key").locator("input").first
    execute = page.get_by_role("button", name="Execute")

    key.fill("bad key")
    page.get_by_text(
        "Evaluation key (eval_key): 'bad key' is not a valid run key", exact=False
    ).first.wait_for()
    expect(execute).to_be_disabled()

    key.fill("good_key")
    page.get_by_text("is not a valid run key", exact=False).first.wait_for(state="hidden")
    expect(execute).to_be_enabled()


def test_shard_run_queues_one_background_run_per_shard_that_the_qa_panel_follows(
    page, app_url, small, models, tmp_path
):
    _open_dataset(page, app_url, small)
    _open_operator(page, "samseg: run a stage on N workers")
    _type(page, "Number of shards", "2")
    _type(page, "Semantic segmenter", models["segformer"])
    _type(page, "Output segmentation field", "ui_sharded")
    page.get_by_role("button", name="Execute").click()
    page.get_by_text("Shards queued").first.wait_for()
    _close_summary(page)

    _open_qa_panel(page)
    page.get_by_text("Background runs: 2 queued", exact=False).first.wait_for()
    page.locator("tr", has_text="shard 1/2").scroll_into_view_if_needed()
    _save(page, tmp_path, "shard_run_queued")
    with _delegated_worker(tmp_path):
        for shard in ("shard 1/2", "shard 2/2"):
            _refresh_until(page, page.locator("tr", has_text=shard).get_by_text("completed", exact=True))
    _save(page, tmp_path, "shard_run_completed")
    assert _poll_dataset(small, "ui_sharded")


def test_a_scheduled_run_says_it_is_queued_and_the_qa_panel_follows_it_by_itself_to_completed(
    page, background_app_url, small, tmp_path
):
    _open_dataset(page, background_app_url, small)
    _open_operator(page, "samseg: evaluate IoU")
    page.get_by_text("Background runs are enabled", exact=False).first.wait_for()  # the form's notice
    _pick(page, "Prediction field", "coarse")
    _type(page, "Evaluation key", "ui_scheduled")
    page.locator("[role=dialog] [aria-haspopup=menu]").click()  # Execute's menu: Execute or Schedule
    page.get_by_role("menuitem").filter(has_text="Schedule").click()
    page.get_by_role("button", name="Schedule").click()
    page.get_by_text("Operation successfully scheduled").wait_for()
    _save(page, tmp_path, "scheduled")

    _open_qa_panel(page)
    row = page.locator("tr", has_text="ui_scheduled")
    row.get_by_text("queued", exact=True).wait_for()
    page.get_by_text("Background runs: 1 queued", exact=False).first.wait_for()
    page.get_by_text("fiftyone delegated launch", exact=False).first.wait_for()  # how to start a worker
    row.scroll_into_view_if_needed()
    _save(page, tmp_path, "background_run_queued")

    with _delegated_worker(tmp_path):  # nobody clicks Refresh: the panel follows the run by itself
        row.get_by_text("completed", exact=True).wait_for(timeout=180_000)
    row.get_by_text("processed 3", exact=False).wait_for()
    row.scroll_into_view_if_needed()
    _save(page, tmp_path, "background_run_completed")
    assert _poll_dataset(small, "ui_scheduled_miou")
    _wait_in_samseg_group(page, ["ui_scheduled_miou"])  # the run's fields, shown without a page load


def test_a_run_from_the_open_sample_modal_shows_its_new_fields_and_values_there(
    page, app_url, small, tmp_path
):
    _open_dataset(page, app_url, small)
    sample_id = _open_first_sample(page)
    assert _modal_value(page, "ui_modal_miou") is None

    _open_operator(page, "samseg: evaluate IoU")
    _pick(page, "Prediction field", "baseline")
    _type(page, "Evaluation key", "ui_modal")
    assert "ui_modal_miou" in _execute(page)
    _close_summary(page)

    assert page.locator("#modal.modalon").count()  # still open, never reloaded
    _poll_dataset(small, "ui_modal_miou")
    ids, mious = small.values(["id", "ui_modal_miou"])
    _wait_modal_value(page, "ui_modal_miou", mious[ids.index(sample_id)])
    _save(page, tmp_path, "modal_after_run")


def test_a_qa_session_on_thirty_samples_in_a_stock_app(page, app_url, thirty, tmp_path):
    from playwright.sync_api import expect

    from samseg_core.metrics import segmentation_scores

    _open_dataset(page, app_url, thirty)
    page.wait_for_timeout(2_000)  # the grid's thumbnails
    _save(page, tmp_path, "session_1_dataset")

    # 1. evaluate IoU: a stock App offers Execute for 30 samples and says how background runs would work
    _open_operator(page, "samseg: evaluate IoU")
    _pick(page, "Prediction field", "baseline")
    notice = page.get_by_text("30 samples: Execute runs them now", exact=False).first
    notice.scroll_into_view_if_needed()
    expect(page.get_by_role("button", name="Execute")).to_be_enabled()
    _save(page, tmp_path, "session_2_evaluate_form")
    summary = _execute(page)
    assert re.search(r"Processed:\s*30\b", summary), summary
    _save(page, tmp_path, "session_3_evaluate_summary")
    _close_summary(page)
    _wait_in_sidebar(page, "samseg_iou_miou")
    _wait_in_samseg_group(page, ["samseg_iou_miou"])  # in samseg's group at once, no page load
    mious = _poll_dataset(thirty, "samseg_iou_miou")
    expected = [segmentation_scores(s.ground_truth.mask, s.baseline.mask, 6).miou for s in thirty]
    assert mious == pytest.approx(expected)

    # 2. failure modes of the same prediction
    _open_operator(page, "samseg: detect failure modes")
    _pick(page, "Prediction field", "baseline")
    assert re.search(r"Processed:\s*30\b", _execute(page))
    _save(page, tmp_path, "session_4_failures_summary")
    _close_summary(page)
    _wait_in_sidebar(page, "samseg_failures_missing")

    # 3. a relabel queue of the 10 worst samples with failures
    _open_operator(page, "samseg: build relabel queue")
    _pick(page, "Failure run", "samseg_failures")
    _type(page, "Max samples", "10")
    assert "relabel" in _execute(page)
    _save(page, tmp_path, "session_5_queue_summary")
    _close_summary(page)

    # 4. the QA panel: the worst sample opens in the modal, a queue button opens its view
    _open_qa_panel(page)
    page.get_by_text("Worst samples", exact=True).wait_for()
    _save(page, tmp_path, "session_6_qa_panel")
    thirty.reload()  # the App's process added fields
    worst = thirty.sort_by("samseg_iou_miou").first()
    page.locator("tr", has_text=Path(worst.filepath).name).get_by_role("button", name="Open").first.click()
    page.wait_for_url(f"**id={worst.id}**")  # the modal shows that sample
    page.locator("#modal.modalon").get_by_text(worst.id, exact=True).first.wait_for()
    _wait_modal_value(page, "samseg_iou_miou", worst.samseg_iou_miou)  # the fields written in this session
    assert _modal_value(page, "samseg_failures_missing") == str(worst.samseg_failures_missing)
    _save(page, tmp_path, "session_7_worst_sample")
    _close_modal(page)

    queued = len(thirty.load_saved_view("relabel"))
    page.get_by_role("button", name=f"Open 'relabel' ({queued})").click()
    page.wait_for_url("**view=relabel**")
    page.get_by_text(f"{queued} samples", exact=True).wait_for()
    _save(page, tmp_path, "session_8_relabel_view")

    # 5. the next time the page loads, samseg's fields are still listed in the sidebar's samseg group
    page.reload(wait_until="domcontentloaded")
    page.get_by_text(f"{queued} samples", exact=True).wait_for()  # the App keeps the queue's view
    _wait_in_sidebar(page, "samseg_iou_miou")
    for field in ("samseg_iou_miou", "samseg_failures", "samseg_failures_missing"):
        assert _sidebar_group(page, field) == SAMSEG_GROUP
    assert _sidebar_group(page, "baseline") == "LABELS"
    _save(page, tmp_path, "session_9_reopened_sidebar")
