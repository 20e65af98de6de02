import json

from editsweep.bench.plan import group_tasks, make_units, plan
from editsweep.bench.spec import load_spec


def sweep(**execution):
    return load_spec(
        {
            "name": "p",
            "datasets": [{"name": "synthetic", "params": {"n": 5}}],
            "seeds": [0, 1],
            "methods": [
                {"name": "ddim_edit", "invert": {"steps": [5, 10]}, "edit": {"guidance": [1.0, 3.0, 7.5]}},
                {"name": "copy"},
            ],
            "execution": execution or {"batch_size": 4},
        }
    )


def test_grid_times_seeds_times_samples():
    tasks, units = plan(sweep())
    # ddim_edit: 5 samples x 2 seeds x 2 invert points x 3 edit points; copy: 5 x 2.
    assert len(tasks) == 60 + 10
    assert len({t.task_key for t in tasks}) == len(tasks)
    groups = group_tasks(tasks)
    assert len(groups) == 20 + 10
    assert all(len(g.tasks) == 3 for g in groups if g.head.method == "ddim_edit")
    assert sum(len(u.tasks) for u in units) == len(tasks)


def test_units_share_method_and_parameters_and_respect_batch_size():
    _, units = plan(sweep(batch_size=3))
    for unit in units:
        assert len(unit.groups) <= 3
        heads = {(g.head.method, g.head.invert_params, tuple(t.edit_params for t in g.tasks)) for g in unit.groups}
        assert len(heads) == 1


def test_task_keys_are_stable_and_defaults_do_not_matter():
    a, _ = plan(sweep())
    b, _ = plan(sweep())
    assert [t.task_key for t in a] == [t.task_key for t in b]
    explicit = load_spec(
        {
            "name": "q",
            "datasets": [{"name": "synthetic", "params": {"n": 5}}],
            "seeds": [0, 1],
            "methods": [{"name": "copy"}, {"name": "ddim_edit", "invert": {"steps": 5, "inversion_guidance": 1.0}}],
        }
    )
    # Spelling out defaults (and renaming the sweep) names the same tasks.
    explicit_tasks, _ = plan(explicit)
    assert {t.task_key for t in explicit_tasks} <= {t.task_key for t in a}


def test_done_tasks_are_left_out_and_partial_groups_keep_their_rest():
    tasks, _ = plan(sweep())
    done = {tasks[0].task_key, tasks[1].task_key}
    _, units = plan(sweep(), done)
    pending = [t for u in units for t in u.tasks]
    assert len(pending) == len(tasks) - 2
    assert not done & {t.task_key for t in pending}
    partial = [g for u in units for g in u.groups if g.key == tasks[0].group_key]
    assert len(partial) == 1 and len(partial[0].tasks) == 1


def test_make_units_does_not_mix_different_edit_point_lists():
    tasks, _ = plan(sweep())
    groups = group_tasks(tasks[1:])  # the first group now lacks one edit point
    units = make_units(groups, batch_size=50)
    for unit in units:
        assert len({len(g.tasks) for g in unit.groups}) == 1


# --- issue 10, items 10, 11 and 13: one task per key, dataset instances, planning at scale ---


def spec_of(datasets, methods, **extra):
    return load_spec({"name": "d", "datasets": datasets, "methods": methods, **extra})


SYN = {"name": "synthetic", "params": {"n": 3}}


def test_duplicate_method_entries_give_each_task_once():
    entry = {"name": "ddim_edit", "invert": {"steps": 5}, "edit": {"guidance": [1.0, 3.0]}}
    tasks, units = plan(spec_of([SYN], [entry, dict(entry)]))
    assert len(tasks) == 3 * 2 and tasks.duplicates == 6
    keys = [t.task_key for u in units for t in u.tasks]
    assert sorted(keys) == sorted(t.task_key for t in tasks) and len(set(keys)) == len(keys)


def test_overlapping_grids_keep_the_first_seen_task_and_share_the_inversion():
    a = {"name": "ddim_edit", "invert": {"steps": 5}, "edit": {"guidance": [1.0, 3.0]}}
    b = {"name": "ddim_edit", "invert": {"steps": [5, 10]}, "edit": {"guidance": [3.0, 7.5]}}
    tasks, units = plan(spec_of([SYN], [a, b]))
    # steps 5: guidance 1, 3, 7.5 (3 shared by both entries); steps 10: guidance 3, 7.5.
    assert len(tasks) == 3 * (3 + 2) and tasks.duplicates == 3
    assert len({t.task_key for t in tasks}) == len(tasks)
    groups = group_tasks(tasks)
    assert len(groups) == 3 * 2
    assert sorted(len(g.tasks) for g in groups) == [2, 2, 2, 3, 3, 3]
    assert sum(len(u.tasks) for u in units) == len(tasks)


def test_a_duplicate_dataset_entry_with_defaults_spelt_out_is_a_duplicate():
    explicit = {"name": "synthetic", "params": {"n": 3, "size": 64, "seed": 0}}
    tasks, _ = plan(spec_of([SYN, explicit], [{"name": "copy"}]))
    assert len(tasks) == 3 and tasks.duplicates == 3


def test_dataset_params_are_part_of_the_task_identity():
    small = {"name": "synthetic", "params": {"n": 3, "size": 32}}
    tasks, units = plan(spec_of([SYN, small], [{"name": "copy"}]))
    assert len(tasks) == 6 and tasks.duplicates == 0
    assert len({t.task_key for t in tasks}) == 6 and len({t.group_key for t in tasks}) == 6
    assert {t.dataset for t in tasks} == {"synthetic"}
    assert {t.dataset_params for t in tasks} == {
        '{"n":3,"seed":0,"size":64}',
        '{"n":3,"seed":0,"size":32}',
    }
    # A unit never mixes two instances of a dataset: a worker loads each unit's samples from one.
    for unit in units:
        assert len({t.dataset_params for t in unit.tasks}) == 1


def test_keys_are_sha256_of_the_documented_payload():
    import hashlib

    from editsweep.bench.plan import canonical_json

    task = plan(spec_of([SYN], [{"name": "copy"}]))[0][0]
    group_payload = canonical_json(
        [
            "editsweep-group-v2",
            task.method,
            task.backbone,
            task.dtype,
            task.dataset,
            json.loads(task.dataset_params),
            task.sample_id,
            task.seed,
            json.loads(task.invert_params),
        ]
    )
    assert task.group_key == hashlib.sha256(group_payload.encode()).hexdigest()
    task_payload = canonical_json(["editsweep-task-v2", task.group_key, json.loads(task.edit_params)])
    assert task.task_key == hashlib.sha256(task_payload.encode()).hexdigest()


def test_tasks_are_slotted_and_their_keys_are_computed_once():
    from editsweep.bench.plan import Task

    tasks, _ = plan(sweep())
    assert not hasattr(tasks[0], "__dict__")
    # Plain attributes, not properties that re-hash on every access.
    assert not isinstance(getattr(Task, "task_key", None), property)
    assert not isinstance(getattr(Task, "group_key", None), property)
    # Tasks of one group share one group-key string object, and the interned parameter strings.
    groups = group_tasks(tasks)
    assert all(t.group_key is g.tasks[0].group_key and t.invert_params is g.tasks[0].invert_params for g in groups for t in g.tasks)


def test_memory_options_do_not_change_task_keys():
    """Offload and slicing change where the model computes, not what (tests/diffusion/test_memory.py)."""
    raw = {"name": "m", "datasets": [{"name": "synthetic", "params": {"n": 2}}], "methods": [{"name": "ddim_edit"}]}
    memory = {"name": "tiny", "offload_text_encoders": True, "attention_slicing": "auto", "vae_slicing": True}
    plain, _ = plan(load_spec(raw))
    sliced, _ = plan(load_spec({**raw, "backbone": memory}))
    assert [t.task_key for t in sliced] == [t.task_key for t in plain]
