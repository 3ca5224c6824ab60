"""distgan: train image GANs on many GPUs, ship the generator as ONNX."""

__version__ = "0.1.0"
