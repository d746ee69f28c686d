"""Pure parts of the optimizer: parsing, metrics, budgets, graph queries, recipes, data checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.errors import ConfigError, DataError
from edgekit.optimize import fidelity as fid
from edgekit.optimize.datasets import Dataset, ImagePreprocessing, load_dataset, load_labels
from edgekit.optimize.graphs import tail_nodes
from edgekit.optimize.inspecting import TensorInfo
from edgekit.optimize.recipes import auto_recipes
from edgekit.optimize.shapes import parse_input_shapes, resolve_shape
from edgekit.optimize.task_metrics import ctc_agreement, ctc_decode, text_mask_iou

INPUTS = (TensorInfo("input", "float32", ("N", 1, 8, 8)),)


def test_parse_input_shapes() -> None:
    assert parse_input_shapes(["x=1,3,640,640", "y=2x5"]) == {"x": (1, 3, 640, 640), "y": (2, 5)}
    for bad in ("x", "x=", "=1,2", "x=1,a", "x=0,3"):
        with pytest.raises(ConfigError, match="--input-shape"):
            parse_input_shapes([bad])


def test_resolve_shape_reads_symbolic_batch_and_refuses_other_symbols() -> None:
    assert resolve_shape(INPUTS[0], None, batch=4) == (4, 1, 8, 8)
    with pytest.raises(DataError, match="symbolic dimension 2"):
        resolve_shape(TensorInfo("x", "float32", (1, 3, "h", "w")), None)
    with pytest.raises(DataError, match="needs"):
        resolve_shape(INPUTS[0], (1, 2, 8, 8))


def test_budget_parsing_and_judgement() -> None:
    acc = fid.parse_metric("accuracy")
    one_point = fid.parse_budget("1%", acc)
    assert one_point.passes(acc, 0.985, 0.99) and not one_point.passes(acc, 0.979, 0.99)
    cos = fid.parse_metric("cosine")
    floor = fid.parse_budget("0.99", cos)
    assert floor.passes(cos, 0.995, 1.0) and not floor.passes(cos, 0.98, 1.0)
    mabs = fid.parse_metric("max-abs")
    assert fid.parse_budget("0.5", mabs).passes(mabs, 0.4, 0.0)
    assert not fid.parse_budget("0.5", mabs).passes(mabs, float("nan"), 0.0)
    for bad in ("", "abc", "1%%", "-1", "150%"):
        with pytest.raises(ConfigError, match="--max-drop"):
            fid.parse_budget(bad, acc)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        fid.parse_budget("1.5", cos)


def test_unknown_and_user_metrics() -> None:
    with pytest.raises(ConfigError, match="unknown metric"):
        fid.parse_metric("f1-score")
    with pytest.raises(ConfigError, match="cannot import"):
        fid.parse_metric("no_such_module_xyz:score")
    user = fid.parse_metric("edgekit.optimize.task_metrics:text_mask_iou")
    assert user.user is text_mask_iou and user.higher_is_better


def test_scores() -> None:
    ref = [np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)]
    same = fid.evaluate(fid.parse_metric("top1"), [ref], [ref], None)
    assert same.score == 1.0 and same.cosine == pytest.approx(1.0) and same.max_abs == 0.0
    flipped = [ref[0][:, ::-1].copy()]
    worse = fid.evaluate(fid.parse_metric("top1"), [ref], [flipped], None)
    assert worse.score == 0.0 and worse.cosine < 1.0
    labels = np.array([1, 0, 0])
    acc = fid.evaluate(fid.parse_metric("accuracy"), [ref], [flipped], labels)
    assert acc.reference == pytest.approx(2 / 3) and acc.score == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="labels"):
        fid.evaluate(fid.parse_metric("accuracy"), [ref], [ref], None)


def test_task_metrics() -> None:
    mask = np.zeros((1, 1, 4, 4), np.float32)
    mask[0, 0, :2, :2] = 0.9
    shifted = np.zeros_like(mask)
    shifted[0, 0, :2, 1:3] = 0.9
    assert text_mask_iou([mask], [mask]) == 1.0
    assert text_mask_iou([mask], [shifted]) == pytest.approx(2 / 6)
    assert text_mask_iou([np.zeros_like(mask)], [np.zeros_like(mask)]) == 1.0
    probs = np.zeros((2, 5, 4), np.float32)
    probs[0, :, :] = np.eye(4)[[1, 1, 0, 2, 2]]
    probs[1, :, :] = np.eye(4)[[3, 0, 3, 0, 0]]
    assert ctc_decode(probs) == [(1, 2), (3, 3)]
    other = probs.copy()
    other[1, 1] = np.eye(4)[3]  # "3 3 3" collapses to one 3: a different string
    assert ctc_agreement([probs], [other]) == 0.5


def _model_with_tail() -> onnx.GraphProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="head_conv"),
        helper.make_node("Sigmoid", ["c2"], ["s"], name="sigmoid"),
        helper.make_node("Concat", ["s", "r"], ["y"], name="concat", axis=1),
    ]
    return helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )


def test_tail_nodes_stop_at_the_last_compute_op() -> None:
    graph = _model_with_tail()
    assert set(tail_nodes(graph)) == {"concat", "sigmoid", "relu"}
    # One compute op passed on every path: the head conv, and the first conv via the skip path.
    assert set(tail_nodes(graph, compute_nodes=1)) == {"concat", "sigmoid", "relu", "head_conv", "conv"}


def test_auto_recipes_order_and_dynamic_only_for_matmul() -> None:
    conv = auto_recipes(has_matmul=False, has_conv=True)
    assert conv[0].method == "static" and conv[0].per_channel and conv[0].calibration == "minmax"
    assert all(r.method == "static" for r in conv)
    mlp = auto_recipes(has_matmul=True, has_conv=False)
    assert any(r.method == "dynamic" for r in mlp)
    assert all(r.method == "dynamic" for r in auto_recipes(has_matmul=True, has_conv=False, method="dynamic"))
    explicit = auto_recipes(has_matmul=False, has_conv=True, method="dynamic")
    assert explicit and all(r.method == "dynamic" and r.op_types == () for r in explicit)


def test_dataset_checks(tmp_path: Path) -> None:
    good = np.zeros((5, 1, 8, 8), np.float32)
    np.savez(tmp_path / "ok.npz", input=good)
    ds = load_dataset(tmp_path / "ok.npz", INPUTS)
    assert ds.samples == 5 and [b["input"].shape[0] for b in ds.batches(2)] == [2, 2, 1]
    np.savez(tmp_path / "name.npz", image=good)
    with pytest.raises(DataError, match=r"missing input\(s\) \['input'\].*unknown key\(s\) \['image'\]"):
        load_dataset(tmp_path / "name.npz", INPUTS)
    np.savez(tmp_path / "shape.npz", input=np.zeros((5, 1, 9, 8), np.float32))
    with pytest.raises(DataError, match="wants"):
        load_dataset(tmp_path / "shape.npz", INPUTS)
    np.savez(tmp_path / "dtype.npz", input=good.astype(np.float64))
    with pytest.raises(DataError, match="float64, the model wants float32"):
        load_dataset(tmp_path / "dtype.npz", INPUTS)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope.npz", INPUTS)
    single = load_dataset("synthetic", INPUTS, samples=3)
    assert single.synthetic and single.samples == 3
    first, rest = Dataset({"input": good}, "x").split(3)
    assert first.samples == 3 and rest.samples == 2


def test_labels(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("1\n2\n3\n")
    assert list(load_labels(tmp_path / "l.txt", 3)) == [1, 2, 3]
    with pytest.raises(DataError, match="has 3 entries but the eval data has 4"):
        load_labels(tmp_path / "l.txt", 4)
    (tmp_path / "bad.txt").write_text("cat\n")
    with pytest.raises(DataError, match="one integer label per line"):
        load_labels(tmp_path / "bad.txt", 1)


def test_image_folder_preprocessing(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    Image.fromarray(pixels).save(folder / "a.png")
    Image.fromarray(pixels[:, :, ::-1].copy()).save(folder / "b.png")  # pure blue
    nchw = (TensorInfo("x", "float32", (1, 3, 2, 3)),)
    prep = ImagePreprocessing(scale=1 / 255, mean=(0.5,), std=(0.5,))
    ds = load_dataset(folder, nchw, preprocessing=prep)
    x = ds.arrays["x"]
    assert x.shape == (2, 3, 2, 3) and x.dtype == np.float32  # resized to the model's 2x3, NCHW
    assert np.allclose(x[0, 0], 1.0) and np.allclose(x[0, 2], -1.0)  # red: (255/255-0.5)/0.5 = 1
    bgr = load_dataset(folder, nchw, preprocessing=ImagePreprocessing(color="BGR"))
    assert np.allclose(bgr.arrays["x"][0, 2], 1.0)  # red lands in the last channel
    nhwc = (TensorInfo("x", "float32", ("N", 5, 5, 1)),)
    gray = load_dataset(folder, nhwc, preprocessing=ImagePreprocessing(layout="NHWC", color="GRAY"))
    assert gray.arrays["x"].shape == (2, 5, 5, 1)
    with pytest.raises(DataError, match="channels"):
        load_dataset(folder, nhwc, preprocessing=ImagePreprocessing(layout="NHWC"))
    (folder / "c.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset(folder, nchw)
    with pytest.raises(DataError, match="symbolic image size"):
        load_dataset(tmp_path / "imgs", (TensorInfo("x", "float32", (1, 3, "h", "w")),))
