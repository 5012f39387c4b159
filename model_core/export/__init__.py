"""Export of checkpoints to portable graphs (ONNX) and a torch-free runtime for them.

Nothing is imported here eagerly: ``model_core.export.onnx`` needs torch, while
``model_core.export.onnx_runtime`` must stay importable on a server without torch.
"""
