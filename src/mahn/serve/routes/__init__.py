"""The HTTP routes, one router per resource; `create_app` includes them in this order."""

from mahn.serve.routes import about, items, recommend, users

ROUTERS = (recommend.router, items.router, users.router, about.router)
