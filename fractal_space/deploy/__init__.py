"""Models as deployed: ONNX graphs checked in ONNX Runtime, cost metrics, timm model folders."""
