"""The dashboard's static files (`static/`), served at `/ui/` by `federation.api.ui`.

No Python runs from here: the dashboard is plain ES modules that call the public `/v1`
API with the token a person logs in with (docs/dashboard.md).
"""
