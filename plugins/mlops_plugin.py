"""The MLOps loop in the Airflow UI: a FastAPI app on the API server at /mlops (include/ui/app.py;
every route behind Airflow's auth manager) and its page in Airflow's navigation (Browse > MLOps)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.ui.app import app


class MlopsPlugin(AirflowPlugin):
    name = "mlops"
    fastapi_apps = [{"app": app, "url_prefix": "/mlops", "name": "MLOps loop"}]
    # the UI shows the page at /plugin/mlops (an iframe of href, the user's session cookie included)
    external_views = [{"name": "MLOps", "href": "/mlops/", "url_route": "mlops", "destination": "nav",
                       "category": "browse"}]
