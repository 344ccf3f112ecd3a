"""The stand-in API server's document rules on plain values: patches, server-side apply, selectors."""

from __future__ import annotations

from typing import Any

import pytest

from keyless.sandbox.kube.merge import (
    ApplyConflictError,
    PatchError,
    SelectorError,
    fields_from_v1,
    fields_to_v1,
    json_patch,
    labels_match,
    leaves,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    server_side_apply,
    strategic_merge_patch,
)

POD_SPEC: dict[str, Any] = {"containers": [
    {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
    {"name": "sidecar", "image": "s:1"},
]}


def _apply(live: dict[str, Any] | None, config: dict[str, Any], manager: str = "keyless",
           force: bool = True) -> dict[str, Any]:
    return server_side_apply(live, config, manager=manager, force=force, api_version="v1",
                             now="2024-01-01T00:00:00Z").obj


def test_merge_patch_deletes_with_null_and_replaces_lists() -> None:
    doc = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"args": ["x", "y"]}}
    assert merge_patch(doc, {"metadata": {"labels": {"a": None}}, "spec": {"args": ["z"]}}) == {
        "metadata": {"labels": {"b": "2"}}, "spec": {"args": ["z"]}}


def test_strategic_merge_merges_keyed_lists_and_honours_directives() -> None:
    patched = strategic_merge_patch({"spec": POD_SPEC}, {"spec": {"containers": [
        {"name": "app", "env": [{"name": "C", "value": "3"}, {"name": "A", "$patch": "delete"}]},
        {"name": "sidecar", "$patch": "delete"},
    ], "$setElementOrder/containers": [{"name": "app"}]}})
    (app,) = patched["spec"]["containers"]
    assert app["image"] == "a:1"
    assert app["env"] == [{"name": "B", "value": "2"}, {"name": "C", "value": "3"}]
    assert strategic_merge_patch({"metadata": {"finalizers": ["a"]}}, {"metadata": {"finalizers": ["b"]}}) == {
        "metadata": {"finalizers": ["a", "b"]}}
    assert strategic_merge_patch({"spec": {"x": {"a": 1, "b": 2}}}, {"spec": {"x": {"$patch": "replace", "c": 3}}}) \
        == {"spec": {"x": {"c": 3}}}


def test_json_patch_operations_and_failures() -> None:
    doc = {"metadata": {"annotations": {"a/b": "1", "c": "2"}}, "list": [1, 2]}
    patched = json_patch(doc, [
        {"op": "remove", "path": "/metadata/annotations/a~1b"},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "copy", "from": "/metadata/annotations/c", "path": "/metadata/annotations/d"},
        {"op": "move", "from": "/list/0", "path": "/first"},
        {"op": "test", "path": "/first", "value": 1},
        {"op": "replace", "path": "/list/0", "value": 9},
    ])
    assert patched == {"metadata": {"annotations": {"c": "2", "d": "2"}}, "list": [9, 3], "first": 1}
    assert doc["list"] == [1, 2]  # the input is left alone
    for broken in ([{"op": "remove", "path": "/nope"}], [{"op": "test", "path": "/list/0", "value": 5}],
                   [{"op": "replace", "path": "/list/7", "value": 1}], [{"op": "jump", "path": "/"}]):
        with pytest.raises(PatchError):
            json_patch(doc, broken)


def test_apply_owns_keyed_list_items_and_drops_them_when_no_longer_applied() -> None:
    live = _apply(None, {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}, manager="porter")
    live = _apply(live, {"spec": {"containers": [{"name": "app", "env": [{"name": "X", "value": "1"}]},
                                                 {"name": "agent", "image": "g:1"}]}})
    assert [c["name"] for c in live["spec"]["containers"]] == ["app", "agent"]
    assert live["spec"]["containers"][0] == {"name": "app", "image": "a:1", "env": [{"name": "X", "value": "1"}]}

    live = _apply(live, {"spec": {"containers": [{"name": "app"}]}})
    assert live["spec"]["containers"] == [{"name": "app", "image": "a:1"}]  # porter still owns app and its image
    managers = {e["manager"] for e in live["metadata"]["managedFields"]}
    assert managers == {"porter", "keyless"}


def test_apply_conflicts_name_the_other_manager() -> None:
    live = _apply(None, {"metadata": {"labels": {"tier": "web"}}}, manager="porter")
    with pytest.raises(ApplyConflictError) as conflict:
        _apply(live, {"metadata": {"labels": {"tier": "api"}}}, force=False)
    assert str(conflict.value) == 'Apply failed with 1 conflict: conflict with "porter" using v1: .metadata.labels.tier'
    shared = _apply(live, {"metadata": {"labels": {"tier": "web"}}}, force=False)  # same value: shared, no conflict
    assert len(shared["metadata"]["managedFields"]) == 2


def test_field_sets_round_trip_through_fields_v1() -> None:
    paths = leaves({"metadata": {"labels": {"a": "1"}}, "spec": POD_SPEC})
    tree = fields_to_v1(paths)
    assert tree["f:spec"]["f:containers"]['k:{"name":"app"}']["."] == {}
    assert fields_from_v1(tree) == frozenset(paths)


def test_selectors() -> None:
    requirements = parse_label_selector("app=web,tier!=db,env in (prod, staging),!legacy,team")
    assert labels_match(requirements, {"app": "web", "env": "prod", "team": "x"})
    assert not labels_match(requirements, {"app": "web", "env": "dev", "team": "x"})
    assert not labels_match(requirements, {"app": "web", "env": "prod", "team": "x", "legacy": "1"})
    with pytest.raises(SelectorError):
        parse_label_selector("bad key=1")
    (field,) = parse_field_selector("metadata.name=web", ())
    assert field.matches({"metadata": {"name": "web"}})
    with pytest.raises(SelectorError):
        parse_field_selector("spec.whatever=1", ())
