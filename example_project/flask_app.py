"""A small Flask app on shardcache's Flask-Caching backends: an app factory, a cached view
and a memoized function, configured from Flask config.

    flask --app "example_project.flask_app:create_app()" run   # the cluster of ./dev up

``create_app(config)`` takes any Flask-Caching config; without one, the Redis Cluster that
`example_project.servers` finds (the environment, or the state file of ``./dev up``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_caching import Cache

cache = Cache()
computed: list[str] = []  # what actually ran, to show what the cache saved


@cache.memoize(timeout=300)
def price(item: str, quantity: int) -> float:
    computed.append(f"price({item}, {quantity})")
    return round(len(item) * 1.25 * quantity, 2)


def default_config() -> dict[str, Any]:
    from example_project.servers import servers

    return {
        "CACHE_TYPE": "shardcache_flask.RedisClusterCache",
        "CACHE_REDIS_CLUSTER": ",".join(servers().cluster_nodes),
        "CACHE_SHARDCACHE_SOCKET_TIMEOUT": 1,
    }


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update({"CACHE_KEY_PREFIX": "shop:", **(config or default_config())})
    cache.init_app(app)

    @app.route("/")
    def index() -> dict[str, Any]:
        return {"try": "/quote/tea/3", "then": "POST /reprice/tea/3"}

    @app.route("/quote/<item>/<int:quantity>")
    @cache.cached(timeout=60)
    def quote(item: str, quantity: int) -> dict[str, Any]:
        computed.append(f"quote({item}, {quantity})")
        return {"item": item, "quantity": quantity, "price": price(item, quantity)}

    @app.route("/reprice/<item>/<int:quantity>", methods=["POST"])
    def reprice(item: str, quantity: int) -> dict[str, Any]:
        cache.delete_memoized(price, item, quantity)
        cache.delete(f"view//quote/{item}/{quantity}")
        return {"forgotten": f"{item} x{quantity}"}

    return app
