"""The fields samseg writes are listed in a "samseg" group of the App's sidebar; a user's own groups survive.

Before: samseg's fields were spread over FiftyOne's default "labels", "primitives" and "other" groups, mixed
with the user's own fields.
"""

from __future__ import annotations

import samseg_core as ss

SIDEBAR_GROUP = "samseg"


def _groups(dataset) -> dict[str, list[str]]:
    dataset.reload()
    return {group.name: list(group.paths) for group in dataset.app_config.sidebar_groups or []}


def _evaluate(dataset, **kwargs) -> None:
    ss.evaluate_iou(dataset, pred_field="coarse", gt_field="ground_truth", eval_key="ev", **kwargs)


def _vote(dataset, **kwargs) -> None:
    ss.semantic_voting(
        dataset, baseline_field="coarse", label_field="voted", instances_field="voted_masks",
        masks="superpixels", device="cpu", **kwargs,
    )  # fmt: skip


def _user_groups():
    import fiftyone as fo

    return [
        fo.SidebarGroupDocument(name="mine", paths=["coarse", "ground_truth"], expanded=True),
        fo.SidebarGroupDocument(name="tags", paths=["tags", "_label_tags"]),
        fo.SidebarGroupDocument(name="labels", paths=[]),
        fo.SidebarGroupDocument(name="later", paths=["filepath"]),
    ]


def test_the_fields_a_stage_writes_are_listed_in_the_samseg_group_after_labels(scene_dataset):
    _evaluate(scene_dataset)

    groups = _groups(scene_dataset)
    names = list(groups)
    assert names.index(SIDEBAR_GROUP) == names.index("labels") + 1
    assert {"ev_miou", "ev_accuracy", "ev_boundary_iou"} <= set(groups[SIDEBAR_GROUP])
    others = {path for name, paths in groups.items() if name != SIDEBAR_GROUP for path in paths}
    assert not others & set(groups[SIDEBAR_GROUP])  # each field is listed once
    assert {"ground_truth", "coarse"} <= others  # the user's fields stay in FiftyOne's default groups


def test_later_stages_extend_the_samseg_group_without_duplicates(scene_dataset):
    _evaluate(scene_dataset)
    before = _groups(scene_dataset)[SIDEBAR_GROUP]

    _vote(scene_dataset)
    _evaluate(scene_dataset, overwrite=True)  # the same fields again

    after = _groups(scene_dataset)[SIDEBAR_GROUP]
    assert set(before) | {"voted", "voted_masks"} <= set(after) and len(after) == len(set(after))


def test_a_users_own_sidebar_groups_survive_and_keep_their_order(scene_dataset):
    scene_dataset.app_config.sidebar_groups = _user_groups()
    scene_dataset.save()
    mine = {group.name: (list(group.paths), group.expanded) for group in _user_groups()}

    _evaluate(scene_dataset)
    _vote(scene_dataset)

    scene_dataset.reload()
    stored = scene_dataset.app_config.sidebar_groups
    assert [g.name for g in stored] == ["mine", "tags", "labels", SIDEBAR_GROUP, "later"]
    assert {g.name: (list(g.paths), g.expanded) for g in stored if g.name != SIDEBAR_GROUP} == mine
    assert {"ev_miou", "voted", "voted_masks"} <= set(_groups(scene_dataset)[SIDEBAR_GROUP])


def test_groups_another_process_stored_meanwhile_are_not_overwritten_by_a_stale_copy(scene_dataset):
    from samseg_core.mask_targets import _collection

    assert scene_dataset.app_config.sidebar_groups is None  # this process's copy
    groups = [group.to_dict() for group in _user_groups()]
    _collection(scene_dataset).update_one(
        {"_id": scene_dataset._doc.id}, {"$set": {"app_config.sidebar_groups": groups}}
    )  # another process (e.g. the App) stores the user's groups

    _evaluate(scene_dataset)

    groups = _groups(scene_dataset)
    assert list(groups) == ["mine", "tags", "labels", SIDEBAR_GROUP, "later"]
    assert "ev_miou" in groups[SIDEBAR_GROUP]


def test_a_samseg_field_the_user_moved_to_a_group_of_their_own_stays_there(scene_dataset):
    _vote(scene_dataset)
    scene_dataset.app_config.sidebar_groups = [
        *[g for g in scene_dataset.app_config.sidebar_groups if g.name != SIDEBAR_GROUP],
        _user_groups()[0],
    ]
    scene_dataset.app_config.sidebar_groups[-1].paths = ["voted"]
    scene_dataset.save()

    _vote(scene_dataset, overwrite=True)
    _evaluate(scene_dataset)

    groups = _groups(scene_dataset)
    assert groups["mine"] == ["voted"]
    assert "voted" not in groups[SIDEBAR_GROUP] and "ev_miou" in groups[SIDEBAR_GROUP]
