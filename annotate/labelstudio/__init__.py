"""Label Studio: the loop's second annotation tool (the first is Argilla).

* :mod:`annotate.labelstudio.config`: the project's label config (a ``<Text>`` field and a ``<Choices>`` question),
  written and parsed;
* :mod:`annotate.labelstudio.client`: Label Studio's REST API over httpx with retries (tenacity);
* :mod:`annotate.labelstudio.tool`: the :class:`annotate.tools.AnnotationTool` of a Label Studio project (records,
  predictions, auto-accepted annotations, Data Manager links);
* :mod:`annotate.labelstudio.backend`: the ML backend a Label Studio user connects under Settings > Model;
* :mod:`annotate.labelstudio.stack`: a local Label Studio without Docker (its own virtualenv, SQLite, 127.0.0.1).

The REST API rather than ``label-studio-sdk``: the SDK's 2.x line requires numpy 2 (this project pins numpy < 2 for
DeepSparse and its ONNX stack) and its 1.0.x line pulls OpenCV and an exact code generator; the few endpoints the
loop needs are small and documented (https://api.labelstud.io).
"""
