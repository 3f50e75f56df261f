"""``--model SOURCE``: model files, Python functions, the built-ins written the same
way, and one clear line for every kind of bad model."""

from __future__ import annotations

import numpy as np
import pytest

from hpcnet.errors import ConfigError
from hpcnet.nn.specs import LAYER_TYPES
from hpcnet.nn.zoo import MODELS, build_model

SMALL = """
name = "small"
[[layers]]
type = "conv2d"
filters = 4
kernel = 3
padding = "same"
[[layers]]
type = "relu"
[[layers]]
type = "flatten"
[[layers]]
type = "dense"
units = "classes"
"""


def test_every_builtin_is_a_model_file_of_the_user_format():
    assert set(MODELS) == {
        "mlp", "wide_mlp", "lenet", "2conv", "digits_cnn", "linear", "alexnet", "towers"
    }  # fmt: skip
    for name, path in MODELS.items():
        assert path.suffix == ".toml" and path.stem == name


def test_a_model_file_builds_what_it_says(tmp_path):
    f = tmp_path / "small.toml"
    f.write_text(SMALL)
    m = build_model(str(f), (1, 8, 8), 10)
    assert [type(layer).__name__ for layer in m.layers] == ["Conv2D", "ReLU", "Flatten", "Dense"]
    assert m.n_params == (4 * 9 + 4) + (4 * 64 * 10 + 10)
    # the same file as the built-in layers, in a copy: the same parameters, bit for bit
    copy = tmp_path / "two.toml"
    copy.write_text(MODELS["2conv"].read_text())
    a, b = build_model(str(copy), (1, 28, 28), 10), build_model("2conv", (1, 28, 28), 10)
    a.init(3)
    b.init(3)
    assert np.array_equal(a.params, b.params)


def test_a_python_function_may_return_layers_or_tables(tmp_path):
    (tmp_path / "net.py").write_text(
        "from hpcnet.nn.layers import Dense, Flatten, ReLU\n"
        "def build(shape, k):\n"
        "    return [Flatten(), Dense(32), ReLU(), Dense(k)]\n"
        "def tables(shape, k):\n"
        "    return [{'type': 'flatten'}, {'type': 'dense', 'units': k}]\n"
        "def broken(shape, k):\n"
        "    raise ValueError('no such width')\n"
        "def other(shape, k):\n"
        "    return 42\n"
    )
    net = tmp_path / "net.py"
    assert build_model(f"{net}:build", (1, 8, 8), 10).n_params == 64 * 32 + 32 + 32 * 10 + 10
    assert build_model(f"{net}:tables", (1, 8, 8), 3).n_params == 64 * 3 + 3
    with pytest.raises(ConfigError, match="raised ValueError: no such width"):
        build_model(f"{net}:broken", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="returned int; expected a list of hpcnet layers"):
        build_model(f"{net}:other", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        build_model(f"{net}:nope", (1, 8, 8), 10)
    (tmp_path / "bad.py").write_text("import no_such_module_here\n")
    with pytest.raises(ConfigError, match="cannot import .*ModuleNotFoundError"):
        build_model(f"{tmp_path / 'bad.py'}:build", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="cannot import no_such_pkg"):
        build_model("no_such_pkg.models:build", (1, 8, 8), 10)


@pytest.mark.parametrize(
    "layers, message",
    [
        ('[{type = "conv3d"}]', "layers\\[0\\]: unknown layer type 'conv3d'; known: conv2d, dense"),
        ('[{type = "relu"}, {type = "dense", width = 3}]',
         "layers\\[1\\] \\(dense\\): no argument 'width'; it takes units"),
        ('[{type = "flatten"}, {type = "dense"}]',
         "layers\\[1\\] \\(dense\\): missing argument 'units'"),
        ('[{type = "conv2d", filters = 4, kernel = 9}, {type = "flatten"}, '
         '{type = "dense", units = "classes"}]',
         "layer 0 \\(Conv2D\\) gets input \\(1, 8, 8\\): Conv2D kernel 9 does not fit a 8x8"),
        ('[{type = "towers", towers = [[{type = "relu"}], [{type = "pool"}]]}]',
         "layers\\[0\\].towers\\[1\\]\\[0\\]: unknown layer type 'pool'"),
        ('[{type = "flatten"}, {type = "dense", units = 7}]',
         "its output is \\(7,\\), but the data has 10 classes"),
        ('[{type = "dropout", rate = 1.5}]', "layers\\[0\\] \\(dropout\\): Dropout rate must be"),
    ],
)  # fmt: skip
def test_bad_model_files_are_one_line_naming_the_layer(tmp_path, layers, message):
    f = tmp_path / "m.toml"
    f.write_text(f"layers = {layers}\n")
    with pytest.raises(ConfigError, match=message):
        build_model(str(f), (1, 8, 8), 10)


def test_unknown_sources_and_files_say_what_a_source_is(tmp_path):
    with pytest.raises(ConfigError, match="unknown model; a built-in .*FILE.toml"):
        build_model("resnet9000", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="cannot read it"):
        build_model(str(tmp_path / "missing.toml"), (1, 8, 8), 10)
    (tmp_path / "x.toml").write_text("layers = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_model(str(tmp_path / "x.toml"), (1, 8, 8), 10)
    (tmp_path / "y.toml").write_text('name = "y"\n')
    with pytest.raises(ConfigError, match="no layers array"):
        build_model(str(tmp_path / "y.toml"), (1, 8, 8), 10)


def test_the_layer_types_are_the_documented_ones():
    assert list(LAYER_TYPES) == [
        "conv2d", "dense", "relu", "leaky_relu", "tanh", "sigmoid", "maxpool2d", "avgpool2d",
        "global_avgpool2d", "batchnorm2d", "dropout", "flatten", "lrn", "residual", "towers",
    ]  # fmt: skip


def test_residual_blocks_from_a_model_file():
    from pathlib import Path

    from hpcnet.nn.residual import Residual

    path = Path(__file__).resolve().parents[1] / "models" / "residual.toml"
    m = build_model(str(path), (1, 8, 8), 10)
    blocks = [layer for layer in m.layers if isinstance(layer, Residual)]
    assert len(blocks) == 2 and not blocks[0].shortcut and len(blocks[1].shortcut) == 1
    assert m.output_shape == (10,)


@pytest.mark.parametrize(
    "layers, message",
    [
        ('[{type = "residual", layers = [{type = "conv2d", filters = 3, kernel = 3}]}]',
         "Residual: its layers give \\(3, 6, 6\\) but its input \\(the identity\\) is"),
        ('[{type = "residual", layers = [{type = "relu"}, {type = "conv"}]}]',
         "layers\\[0\\].layers\\[1\\]: unknown layer type 'conv'"),
        ('[{type = "residual", layers = [{type = "relu"}], shortcut = [{type = "tanh", x = 1}]}]',
         "layers\\[0\\].shortcut\\[0\\] \\(tanh\\): no argument 'x'"),
    ],
)  # fmt: skip
def test_bad_residual_blocks_name_the_inner_layer(tmp_path, layers, message):
    f = tmp_path / "m.toml"
    f.write_text(f"layers = {layers}\n")
    with pytest.raises(ConfigError, match=message):
        build_model(str(f), (1, 8, 8), 10)


def test_a_run_config_may_hold_the_layers(tmp_path):
    # [model] layers in a --config file: the same model as that array in a model file,
    # kept through the resolved config's TOML (what resume, export and search read)
    from hpcnet.config import load_config
    from hpcnet.nn.zoo import run_model

    layers = (
        'layers = [{ type = "conv2d", filters = 4, kernel = 3, padding = "same" },\n'
        '  { type = "batchnorm2d" }, { type = "relu" }, { type = "global_avgpool2d" },\n'
        '  { type = "dense", units = "classes" }]\n'
    )
    (tmp_path / "run.toml").write_text('[model]\nname = "mine"\n' + layers)
    (tmp_path / "model.toml").write_text(layers)
    cfg = load_config(str(tmp_path / "run.toml"))
    model = run_model(cfg.model, "digits", (1, 8, 8), 10)
    other = build_model(str(tmp_path / "model.toml"), (1, 8, 8), 10)
    assert model.name == "mine" and model.n_params == other.n_params == 4 * 9 + 4 + 8 + 50
    assert [type(a) for a in model.layers] == [type(b) for b in other.layers]
    (tmp_path / "again.toml").write_text(cfg.to_toml())
    assert load_config(str(tmp_path / "again.toml")).model.layers == cfg.model.layers
    (tmp_path / "bad.toml").write_text('[model]\nlayers = [{ type = "conv3d" }]\n')
    with pytest.raises(ConfigError, match=r"\[model\] layers.*conv3d"):
        run_model(load_config(str(tmp_path / "bad.toml")).model, "digits", (1, 8, 8), 10)
    (tmp_path / "notarray.toml").write_text('[model]\nlayers = "conv2d"\n')
    with pytest.raises(ConfigError, match=r"\[model\] layers must be an array"):
        load_config(str(tmp_path / "notarray.toml"))
