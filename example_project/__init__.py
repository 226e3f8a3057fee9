"""The example project: the demo (``./dev demo``) and a small Flask app."""
