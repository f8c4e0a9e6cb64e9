"""What leaves a run for serving: the Hugging Face export (`hf`), the int8 format (`int8`, the only
module that imports qwix) and `load.load_export`, which loads either kind in one call.

May import `distill.model`, `distill.arch`, `distill.files` and `tasks`; no training code.
"""
