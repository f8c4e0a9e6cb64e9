"""What leaves a run for serving: the Hugging Face export (`hf`), the int8 format (`int8`, the only
module that imports qwix), the ONNX export and its int8 variant (`onnx`, the only module that imports
jax2onnx, onnx and onnxruntime: the optional `onnx` extra, imported inside its functions so the library
imports without it), `load.load_export`, which loads any kind in one call, and `card`: the model card
(README.md) every export gets and `push_to_hub` (the only module that uploads, with huggingface_hub).

May import `distill.model`, `distill.arch`, `distill.files` and `tasks`; no training code.
"""
