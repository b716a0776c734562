"""The streaming runtime, between the layers and quantizers (nn, quant) and the model: the
native frame engine (``native/``: C compiled at first use, called through ctypes) and the
stream runner that sends each chunk to it or to the PyTorch layers (``stream.py``)."""
