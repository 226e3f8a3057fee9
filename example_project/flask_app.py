"""A small Flask app on shardcache's Flask-Caching backends (used by the demo).

from example_project.flask_app import create_app
app = create_app({"CACHE_TYPE": "shardcache_flask.RedisClusterCache",
                  "CACHE_REDIS_CLUSTER": "127.0.0.1:7000,127.0.0.1:7001"})
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


def create_app(config: dict[str, Any]) -> Flask:
    app = Flask(__name__)
    app.config.update({"CACHE_KEY_PREFIX": "shop:", **config})
    cache.init_app(app)

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
