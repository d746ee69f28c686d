"""Model optimization: inspect, benchmark and quantize ONNX models under an accuracy budget."""
