"""Model serving: the FastAPI app (:mod:`include.serving.app`, assembled from ``schema``, ``metrics``,
``batcher``, ``routes`` and ``protocols``), its prediction log
(:mod:`include.serving.predlog`) and the image (``Dockerfile`` + ``requirements.txt`` here, built by
``tools/build_serving_image.sh``).

Importing this package is cheap; the app module (pandas, sklearn, MLflow) loads only when used:
``uvicorn include.serving.app:app`` or ``python -m include.serving``.
"""

from include.serving.predlog import PredictionLog, read_predictions

__all__ = ["PredictionLog", "read_predictions"]
