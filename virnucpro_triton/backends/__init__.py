"""Where the models run, behind one interface (base.py): torch (torch_backend.py) or an ONNX
graph (onnx_backend.py), built by one factory (factory.py) from an entry's architecture.json."""
