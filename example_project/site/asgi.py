"""The example site under an ASGI server: ``uvicorn example_project.site.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.site.settings")
application = get_asgi_application()
