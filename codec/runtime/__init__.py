"""The inference runtime, between the layers and quantizers (nn, quant) and the model: the
streamer (``streamer.py``: one object per precision and backend, made by ``Codec.streamer``),
the snapshot of the weights it prepares once (``snapshot.py``), the stream runner that sends
each chunk to the native frame engine or the PyTorch layers (``stream.py``), the native frame
engine (``native/``: C compiled at install time, called through ctypes), the offline coders'
shared input checks and padded batches (``batch.py``), and the ONNX export of the streaming
steps for other runtimes (``export.py``, with ``onnx_stream.py`` its reference onnxruntime
client)."""
