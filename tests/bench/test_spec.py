from pathlib import Path

import pytest

from editsweep.bench.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]


def minimal(**overrides):
    spec = {
        "name": "t",
        "datasets": [{"name": "synthetic", "params": {"n": 2}}],
        "methods": [{"name": "ddim_edit", "invert": {"steps": 5}, "edit": {"guidance": [1.0, 7.5]}}],
    }
    spec.update(overrides)
    return spec


def test_every_config_in_the_repo_validates():
    for path in sorted((REPO / "configs").glob("**/*.yaml")):
        assert load_spec(path).name


def test_grids_fill_defaults():
    spec = load_spec(minimal())
    (method,) = spec.methods
    assert method.invert_grid() == [{"steps": 5, "inversion_guidance": 1.0, "encoding_ratio": 1.0}]
    assert method.edit_grid() == [{"guidance": 1.0}, {"guidance": 7.5}]


def test_unknown_top_level_key_names_it():
    with pytest.raises(SpecError, match="methodz"):
        load_spec(minimal(methodz=[]))


def test_unknown_method_lists_known_ones():
    with pytest.raises(SpecError, match=r"methods\[0\]\.name: unknown method 'nti'.*ddim_edit"):
        load_spec(minimal(methods=[{"name": "nti"}]))


def test_out_of_range_parameter_names_path_and_value():
    bad = minimal(methods=[{"name": "ddim_edit", "edit": {"guidance": [1.0, -2.0]}}])
    with pytest.raises(SpecError, match=r"methods\[0\]\.edit\.guidance: .*greater than or equal to 0.*-2\.0"):
        load_spec(bad)


def test_misspelt_parameter_lists_allowed_ones():
    bad = minimal(methods=[{"name": "sdedit", "edit": {"strenght": 0.5}}])
    with pytest.raises(SpecError, match=r"methods\[0\]\.edit\.strenght.*strength, guidance, steps"):
        load_spec(bad)


def test_wrong_type_in_nested_section():
    with pytest.raises(SpecError, match=r"execution\.batch_size"):
        load_spec(minimal(execution={"batch_size": "many"}))


def test_bad_dataset_params_and_unknown_metric():
    bad = minimal(datasets=[{"name": "synthetic", "params": {"n": 0}}], metrics={"fid2": {}})
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert "datasets[0].params.n" in str(info.value)
    assert "metrics.fid2: unknown metric" in str(info.value)


def test_random_scorer_weights_need_consent():
    with pytest.raises(SpecError, match="allow_random_weights"):
        load_spec(minimal(metrics={"lpips": {"weights": "random"}}))
    assert load_spec(minimal(metrics={"lpips": {"weights": "random"}}, allow_random_weights=True))


def test_empty_grid_axis_and_duplicate_seeds():
    with pytest.raises(SpecError, match="empty grid"):
        load_spec(minimal(methods=[{"name": "sdedit", "edit": {"strength": []}}]))
    with pytest.raises(SpecError, match="distinct"):
        load_spec(minimal(seeds=[1, 1]))


def test_malformed_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    path.write_text("- just a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(path)


def test_plugin_file_registers_a_method(tmp_path):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(
        "from editsweep.methods.copy_input import Copy\n"
        "from editsweep.methods.base import register_method\n"
        "@register_method\nclass Mine(Copy):\n    name = 'my_copy'\n"
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "name: p\nimports: [my_method.py]\ndatasets: [{name: synthetic}]\nmethods: [{name: my_copy}]\n"
    )
    assert load_spec(spec_path).methods[0].name == "my_copy"
    with pytest.raises(SpecError, match="no such file"):
        load_spec(minimal(imports=[str(tmp_path / "missing.py")]))


def test_backbone_lists_are_distinct_and_share_a_device():
    spec = load_spec(minimal(backbone=[{"name": "tiny"}, {"name": "tiny", "dtype": "bfloat16"}]))
    assert [(b.name, b.dtype) for b in spec.backbones] == [("tiny", "float32"), ("tiny", "bfloat16")]
    with pytest.raises(SpecError, match="distinct"):
        load_spec(minimal(backbone=[{"name": "tiny"}, {"name": "tiny"}]))
    with pytest.raises(SpecError, match="same device"):
        load_spec(minimal(backbone=[{"name": "tiny"}, {"name": "x", "device": "cpu"}]))
