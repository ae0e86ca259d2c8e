"""Training of the tiny ``shapes-*`` checkpoints shipped with vlm-notebook.

Run ``python -m vlm_notebook.training smolvlm --steps N --seed S`` to rebuild one.
Modules: ``tokenizer`` (byte-level BPE), ``loop`` (generic training loop), ``vision``
(vision-tower pretraining heads), ``smolvlm`` (the tiny SmolVLM, its processor and
recipe), ``evaluate`` (exact-match scoring of a saved dir), ``card`` (training record
and model card).
"""
