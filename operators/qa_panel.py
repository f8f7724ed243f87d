"""The samseg QA panel: mIoU per field before/after, failure counts, per-class IoU chart, worst samples,
buttons that open the relabel queues' saved views, and samseg's background runs on the dataset with their state.
The QA data comes from :func:`samseg_core.stages.qa_summary.qa_summary`, the runs from
:func:`operators.background_runs.list_background_runs`.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from samseg_core.stages.qa_summary import per_class_bar_traces, qa_summary, queue_buttons, summary_markdown

from .app_refresh import field_names, show_listed_fields_in_modal, show_new_fields
from .background_runs import (
    AUTO_REFRESH_MS,
    WORKER_HOWTO,
    finished_since,
    list_background_runs,
    pending_line,
    waiting_for_a_worker,
)

_RUN_COLUMNS = (
    ("run", "Background run"),
    ("state", "State"),
    ("queued", "Queued (UTC)"),
    ("details", "Details"),
)


def _event_param(ctx: Any, name: str) -> Any:
    """A button's or input's parameter: in ``ctx.params`` (panel events) or its ``event_args``."""
    value = ctx.params.get(name)
    if value is None:
        value = (getattr(ctx, "event_args", None) or ctx.params.get("event_args") or {}).get(name)
    return value


class QAPanel(foo.Panel):
    """Segmentation QA overview of the current dataset."""

    @property
    def config(self) -> foo.PanelConfig:
        return foo.PanelConfig(
            name="samseg_qa_panel",
            label="samseg QA",
            help_markdown="mIoU per field, failure modes and relabel queues computed by samseg's operators",
            surfaces="grid",
        )

    def _refresh(self, ctx: Any, eval_key: str | None = None) -> None:
        if ctx.dataset is None:
            return
        try:
            summary = qa_summary(ctx.view, eval_key=eval_key)
        except ValueError:  # the selected run was deleted or renamed meanwhile
            summary = qa_summary(ctx.view)
        state = ctx.panel.state
        state.summary_md = summary_markdown(summary)
        state.eval_key = summary["selected"]
        state.eval_keys = [e["key"] for e in summary["evaluations"]]
        state.worst = [
            {
                "filename": w["filename"],
                "miou": None if w["miou"] is None else round(w["miou"], 4),
                "id": w["id"],
            }
            for w in summary["worst"]
        ]
        state.views = queue_buttons(ctx.view, summary)
        state.background_runs = list_background_runs(ctx.dataset.name)
        state.fields = field_names(ctx.dataset)
        ctx.panel.data.per_class = per_class_bar_traces(summary)

    def on_load(self, ctx: Any) -> None:
        self._refresh(ctx)

    def on_change_dataset(self, ctx: Any) -> None:
        self._refresh(ctx)

    def refresh(self, ctx: Any) -> None:
        before = ctx.panel.state.background_runs or []
        fields_before = ctx.panel.state.fields or []
        self._refresh(ctx, ctx.panel.state.eval_key)
        if finished_since(before, ctx.panel.state.background_runs or []):
            show_new_fields(ctx, fields_before)  # a background run wrote fields: show them

    def select_evaluation(self, ctx: Any) -> None:
        self._refresh(ctx, _event_param(ctx, "value"))

    def open_view(self, ctx: Any) -> None:
        name = _event_param(ctx, "view")
        if name:
            ctx.ops.set_view(name=name)

    def open_worst_sample(self, ctx: Any) -> None:
        """A click on a worst-samples row opens that sample in the modal."""
        row = _event_param(ctx, "row")
        worst = ctx.panel.state.worst or []
        if row is not None and 0 <= int(row) < len(worst):
            show_listed_fields_in_modal(ctx)
            ctx.ops.open_sample(id=worst[int(row)]["id"])

    def show_worst(self, ctx: Any) -> None:
        ids = [row["id"] for row in ctx.panel.state.worst or []]
        if ids:
            ctx.ops.set_view(view=ctx.dataset.select(ids, ordered=True))

    def render(self, ctx: Any) -> types.Property:
        panel = types.Object()
        state = ctx.panel.state
        runs = state.background_runs or []
        pending = pending_line(runs)
        if pending:
            panel.md(pending, name="background_pending")
            # follows the runs until they end (the timer goes with the last unfinished one)
            panel.view("background_poll", types.TimerView(interval=AUTO_REFRESH_MS, on_interval=self.refresh))
        panel.str("summary_md", view=types.MarkdownView())
        keys = state.eval_keys or []
        if keys:
            dropdown = types.DropdownView(label="Evaluation")
            for key in keys:
                dropdown.add_choice(key, label=key)
            panel.enum(
                "eval_key", keys, default=state.eval_key, view=dropdown, on_change=self.select_evaluation
            )
            panel.plot(
                "per_class",
                layout={
                    "title": {"text": "Per-class IoU (summed over samples)"},
                    "barmode": "group",
                    "yaxis": {"range": [0, 1], "title": {"text": "IoU"}},
                    "height": 320,
                    "margin": {"l": 50, "r": 20, "t": 40, "b": 40},
                },
            )
            table = types.TableView()
            table.add_column("filename", label="Worst samples")
            table.add_column("miou", label="mIoU")
            table.add_row_action("open_sample", self.open_worst_sample, label="Open", icon="open_in_new")
            panel.list("worst", types.Object(), view=table)
            panel.btn("show_worst", label="Show worst samples", on_click=self.show_worst, variant="outlined")
        buttons = panel.h_stack("queue_views", align_x="left")
        for i, button in enumerate(state.views or []):  # queues with samples only, with their counts
            buttons.btn(
                f"open_view_{i}",
                label=button["label"],
                on_click=self.open_view,
                params={"view": button["view"]},
                variant="contained",
            )
        _render_background_runs(panel, runs)
        panel.btn("refresh", label="Refresh", on_click=self.refresh, icon="refresh")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=1))


def _render_background_runs(panel: types.Object, runs: list[dict[str, Any]]) -> None:
    """The table of samseg's background runs on the dataset (none: nothing), and how to start a worker while
    some wait for one."""
    if not runs:
        return
    panel.md("**Background runs** (newest first)", name="background_heading")
    table = types.TableView()
    for key, label in _RUN_COLUMNS:
        table.add_column(key, label=label)
    panel.list("background_runs", types.Object(), view=table)
    if waiting_for_a_worker(runs):
        panel.md(WORKER_HOWTO, name="background_howto")


PANELS = [QAPanel]
