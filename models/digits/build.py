"""Train the example digits CNN on scikit-learn's bundled digits data set and export it to ONNX.

Reproducible: fixed seed, single-threaded BLAS advice in the README, data splits written beside
the model. Pure numpy (no deep-learning framework needed on a laptop or in CI).

    python models/digits/build.py [--out models/digits] [--epochs 30]

Writes:
    digits.onnx        FP32 model, input ``input`` float32 [N,1,8,8] (pixels / 16), output ``logits`` [N,10]
    calib.npz          calibration split   {"input": [200,1,8,8]}
    eval.npz           evaluation split    {"input": [397,1,8,8]}
    eval_labels.txt    one true label per line, in eval order
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261128
CHANNELS = (32, 64, 128)


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    return {"train": (x[:1200], y[:1200]), "calib": (x[1200:1400], y[1200:1400]), "eval": (x[1400:], y[1400:])}


# --- a tiny conv net with hand-written backprop (im2col) ------------------------------------------
def im2col(x: np.ndarray) -> np.ndarray:
    """[N,C,H,W] -> [N*H*W, C*9] for 3x3 convolution with padding 1, stride 1."""
    n, c, h, w = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, c, 3, 3, h, w), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, i, j] = p[:, :, i : i + h, j : j + w]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * h * w, c * 9)


def col2im(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n, c, h, w = shape
    cols = cols.reshape(n, h, w, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
    p = np.zeros((n, c, h + 2, w + 2), dtype=cols.dtype)
    for i in range(3):
        for j in range(3):
            p[:, :, i : i + h, j : j + w] += cols[:, :, i, j]
    return p[:, :, 1:-1, 1:-1]


class Net:
    def __init__(self, rng: np.random.Generator) -> None:
        c1, c2, c3 = CHANNELS
        self.params: dict[str, np.ndarray] = {}
        for name, (cout, cin) in {"conv1": (c1, 1), "conv2": (c2, c1), "conv3": (c3, c2)}.items():
            self.params[f"{name}.w"] = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(
                np.float32
            )
            self.params[f"{name}.b"] = np.zeros(cout, np.float32)
        self.params["fc.w"] = (rng.standard_normal((10, c3)) * np.sqrt(1 / c3)).astype(np.float32)
        self.params["fc.b"] = np.zeros(10, np.float32)

    def conv(self, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, b = self.params[f"{name}.w"], self.params[f"{name}.b"]
        n, _, h, wd = x.shape
        cols = im2col(x)
        out = cols @ w.reshape(w.shape[0], -1).T + b
        return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        cache: dict[str, np.ndarray] = {"x": x}
        z1, cache["cols1"] = self.conv("conv1", x)
        a1 = np.maximum(z1, 0)
        z2, cache["cols2"] = self.conv("conv2", a1)
        a2 = np.maximum(z2, 0)
        n, c, h, w = a2.shape
        blocks = a2.reshape(n, c, h // 2, 2, w // 2, 2)
        p2 = blocks.max(axis=(3, 5))
        cache["pool_mask"] = blocks == p2[:, :, :, None, :, None]
        z3, cache["cols3"] = self.conv("conv3", p2)
        a3 = np.maximum(z3, 0)
        g = a3.mean(axis=(2, 3))
        logits = g @ self.params["fc.w"].T + self.params["fc.b"]
        cache.update(a1=a1, z1=z1, z2=z2, a2=a2, p2=p2, z3=z3, a3=a3, g=g)
        return logits, cache

    def backward(self, dlogits: np.ndarray, cache: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        grads: dict[str, np.ndarray] = {}
        grads["fc.w"] = dlogits.T @ cache["g"]
        grads["fc.b"] = dlogits.sum(0)
        dg = dlogits @ self.params["fc.w"]
        a3 = cache["a3"]
        da3 = np.broadcast_to(dg[:, :, None, None] / (a3.shape[2] * a3.shape[3]), a3.shape)
        dz3 = da3 * (cache["z3"] > 0)
        dp2 = self._conv_back("conv3", dz3, cache["cols3"], cache["p2"].shape, grads)
        mask = cache["pool_mask"]
        da2 = (mask * dp2[:, :, :, None, :, None]).reshape(cache["a2"].shape)
        dz2 = da2 * (cache["z2"] > 0)
        da1 = self._conv_back("conv2", dz2, cache["cols2"], cache["a1"].shape, grads)
        dz1 = da1 * (cache["z1"] > 0)
        self._conv_back("conv1", dz1, cache["cols1"], cache["x"].shape, grads)
        return grads

    def _conv_back(
        self, name: str, dz: np.ndarray, cols: np.ndarray, in_shape: tuple[int, ...], grads: dict[str, np.ndarray]
    ) -> np.ndarray:
        w = self.params[f"{name}.w"]
        dz2d = dz.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
        grads[f"{name}.w"] = (dz2d.T @ cols).reshape(w.shape)
        grads[f"{name}.b"] = dz2d.sum(0)
        return col2im(dz2d @ w.reshape(w.shape[0], -1), in_shape)


def train(x: np.ndarray, y: np.ndarray, epochs: int) -> Net:
    rng = np.random.default_rng(SEED)
    net = Net(rng)
    m = {k: np.zeros_like(v) for k, v in net.params.items()}
    v = {k: np.zeros_like(p) for k, p in net.params.items()}
    lr, b1, b2, step = 2e-3, 0.9, 0.999, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 32):
            idx = order[start : start + 32]
            logits, cache = net.forward(x[idx])
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            dlogits = prob.copy()
            dlogits[np.arange(len(idx)), y[idx]] -= 1
            grads = net.backward(dlogits / len(idx), cache)
            step += 1
            for k, g in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                mhat, vhat = m[k] / (1 - b1**step), v[k] / (1 - b2**step)
                net.params[k] -= (lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
        if epoch == epochs * 2 // 3:
            lr /= 5
    return net


def export(net: Net, path: Path) -> None:
    p = net.params
    inits = [numpy_helper.from_array(v.astype(np.float32), name=k) for k, v in p.items()]
    inits[-2] = numpy_helper.from_array(p["fc.w"].T.copy(), name="fc.w")  # Gemm B as [in, out]
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "Conv", ["p2", "conv3.w", "conv3.b"], ["c3"], name="conv3", pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        ),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="edgekit-models",
        producer_version="1",
        doc_string="Digits CNN trained on scikit-learn's digits data set.",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    splits = load_splits()
    net = train(*splits["train"], epochs=args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    export(net, args.out / "digits.onnx")
    np.savez_compressed(args.out / "calib.npz", input=splits["calib"][0])
    np.savez_compressed(args.out / "eval.npz", input=splits["eval"][0])
    (args.out / "eval_labels.txt").write_text("".join(f"{int(v)}\n" for v in splits["eval"][1]))
    logits, _ = net.forward(splits["eval"][0])
    acc = float((logits.argmax(1) == splits["eval"][1]).mean())
    print(
        f"digits CNN: eval accuracy {acc:.4f} on {len(splits['eval'][1])} held-out images -> {args.out / 'digits.onnx'}"
    )


if __name__ == "__main__":
    main()
