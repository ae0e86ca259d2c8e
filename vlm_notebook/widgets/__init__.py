"""Interactive ipywidgets front ends to the models, whose answers stream into an Output.

>>> from vlm_notebook.models import SmolVLM
>>> from vlm_notebook.widgets import SmolVLMWidget
>>> widget = SmolVLMWidget(SmolVLM("shapes-smolvlm"))
>>> widget  # upload a picture, click Run, watch the answer arrive
SmolVLMWidget(model='shapes-smolvlm')
"""

from ._widget import MoondreamWidget, Qwen2VLWidget, SmolVLMWidget, VLMWidget

__all__ = ["MoondreamWidget", "Qwen2VLWidget", "SmolVLMWidget", "VLMWidget"]
