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
