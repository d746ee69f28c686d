"""edgekit: take an ONNX model from a laptop to thousands of edge devices, safely."""

__version__ = "0.1.0"
