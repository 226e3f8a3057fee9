from __future__ import annotations

from django.urls import path

from example_project.shop import views

urlpatterns = [
    path("", views.home),
    path("products/<int:pk>/", views.product),
    path("stats/", views.stats),
    path("session/", views.session),
    path("memcache/<str:name>/", views.memcached),
    path("jobs/", views.jobs),
    path("jobs/claim/", views.claim),
    path("jobs/changes/", views.changes),
    path("ops/memcache-states/", views.memcache_states),
]
