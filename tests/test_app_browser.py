"""Real-browser test: the FiftyOne App (server on loopback) driven by headless Chromium through Playwright.

Run alone: ``source scripts/env.sh && python -m pytest -q -m browser tests/test_app_browser.py``. Needs
Debian's ``chromium`` (``bash scripts/install_browser.sh``); skipped without it unless ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
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
SCREENSHOT_COPY = Path("/tmp/samseg_app_screenshot.png")
PANEL_SCREENSHOT_COPY = Path("/tmp/samseg_app_qa_panel.png")
TIMEOUT_MS = 90_000
SAMSEG_OPERATOR_LABELS = (
    "samseg: evaluate IoU",
    "samseg: detect failure modes",
    "samseg: build relabel queue",
)


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


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """A persistent dataset (the App server is another process) of 2 images with ground truth and baseline."""
    import fiftyone as fo
    from PIL import Image

    folder = tmp_path_factory.mktemp("app-images")
    gt = np.zeros((60, 80), np.uint8)
    gt[10:30, 10:30] = 1
    gt[30:50, 40:70] = 2
    baseline = gt.copy()
    baseline[10:20, 10:30] = 0  # half of the cat missed
    dataset = fo.Dataset(f"samseg-browser-{uuid.uuid4().hex[:8]}", persistent=True)
    samples = []
    for i in range(2):
        path = folder / f"img{i}.png"
        Image.fromarray(np.stack([gt * 90 + 30 + 10 * i] * 3, axis=-1).astype(np.uint8)).save(path)
        samples.append(
            fo.Sample(
                filepath=str(path),
                ground_truth=fo.Segmentation(mask=gt),
                baseline=fo.Segmentation(mask=baseline),
            )
        )
    dataset.add_samples(samples)
    dataset.mask_targets = {"ground_truth": {0: "background", 1: "cat", 2: "dog"}}
    dataset.save()
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, app_dataset):
    """The App server on a free loopback port, sharing this process's database and plugins dir."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app-server") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"],
            env=os.environ.copy(),
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


def _open_dataset(page, app_url: str, dataset, query: str = "") -> None:
    """Loads the dataset page; reloads once when the first load stalls on "Pixelating..."."""
    page.goto(f"{app_url}/datasets/{dataset.name}{query}", wait_until="domcontentloaded")
    samples_count = page.get_by_text(f"{len(dataset)} samples")
    try:
        samples_count.wait_for(timeout=30_000)
    except Exception:
        page.reload(wait_until="domcontentloaded")
        samples_count.wait_for()
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()


def _poll_dataset(dataset, field: str, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dataset.reload()
        if dataset.has_field(field) and dataset.count(field) == len(dataset):
            return dataset.values(field)
        time.sleep(0.5)
    raise AssertionError(f"field '{field}' did not appear in the database within {timeout}s")


def _save_screenshot(page, path: Path, copy_to: Path) -> None:
    page.screenshot(path=str(path))
    shutil.copyfile(path, copy_to)


def _expected_miou(dataset) -> list[float]:
    from samseg_core.metrics import segmentation_scores

    return [segmentation_scores(sample.ground_truth.mask, sample.baseline.mask, 3).miou for sample in dataset]


def _inline_error_blocks_execute(page, good: str, bad: str, message: str) -> None:
    """Types ``bad`` into the form input holding ``good``: resolve_input marks it invalid with ``message`` and
    Execute is disabled; typing ``good`` back clears the error."""
    page.locator(f"input[value='{good}']").first.wait_for()
    index = page.locator("input").evaluate_all(f"els => els.findIndex(e => e.value === '{good}')")
    box = page.locator("input").nth(index)  # by position: the value attribute changes as we type
    box.fill(bad)
    page.get_by_text(message, exact=False).first.wait_for()
    assert page.get_by_role("button", name="Execute").is_disabled()
    box.fill(good)
    page.get_by_text(message, exact=False).first.wait_for(state="hidden")


def test_operator_browser_lists_samseg_and_runs_evaluation_from_its_form(
    page, app_url, app_dataset, tmp_path
):
    _open_dataset(page, app_url, app_dataset)
    page.locator("body").click(position={"x": 1000, "y": 700})
    page.keyboard.press("`")
    search = page.get_by_placeholder("Search operations by name...")
    search.fill("samseg")
    for label in SAMSEG_OPERATOR_LABELS:
        page.get_by_text(label, exact=True).wait_for()

    page.get_by_text("samseg: evaluate IoU", exact=True).click()
    page.get_by_text("Ground truth", exact=True).first.wait_for()
    _inline_error_blocks_execute(page, "samseg_iou", "bad key", "is not a valid run key")
    page.get_by_role("button", name="Execute").click()

    mious = _poll_dataset(app_dataset, "samseg_iou_miou")
    page.get_by_text("Processed:").first.wait_for()  # the run summary (resolve_output)
    page.get_by_text("eval_key").first.wait_for()  # its results table (a code block of key  value lines)
    page.get_by_role("button", name="Close").click()
    page.get_by_text("samseg_iou_miou", exact=True).first.wait_for()  # the App reloaded the new fields
    _save_screenshot(page, tmp_path / "app_after_evaluate_iou.png", SCREENSHOT_COPY)
    assert mious == pytest.approx(_expected_miou(app_dataset))


def test_qa_panel_shows_evaluation_and_opens_queue_view(page, app_url, app_dataset, tmp_path):
    from samseg_core.stages.curation import build_relabel_queue
    from samseg_core.stages.evaluation import evaluate_iou

    evaluate_iou(app_dataset, "baseline", "ground_truth", eval_key="panel_iou")
    build_relabel_queue(app_dataset, eval_key="panel_iou", name="panelq", max_samples=1)
    _open_dataset(page, app_url, app_dataset)
    page.get_by_title("New panel").first.click()
    page.get_by_text("samseg QA", exact=True).first.click()
    page.get_by_text("Worst samples", exact=True).wait_for()
    page.get_by_text("panel_iou", exact=True).first.wait_for()
    _save_screenshot(page, tmp_path / "app_qa_panel.png", PANEL_SCREENSHOT_COPY)

    page.get_by_role("button", name="Open 'panelq'").click()
    page.wait_for_url("**view=panelq**")
    page.get_by_text("1 sample", exact=True).wait_for()
