"""The streaming runtime, between the layers and quantizers (nn, quant) and the model: the
native frame engine (``native/``: C compiled at install time, called through ctypes), the
stream runner that sends each chunk to it or to the PyTorch layers (``stream.py``), and the
ONNX export of the streaming steps for other runtimes (``export.py``, with ``onnx_stream.py``
its reference onnxruntime client)."""
