"""The HTTP routes, one router per resource; `create_app` includes them in this order, each group behind the
access it needs (mahn.serve.access): OPEN always, READS under `--protect all`, WRITES behind the token."""

from mahn.serve.routes import about, admin, items, recommend, users

OPEN = (about.open_router,)
READS = (recommend.router, items.router, users.router, about.router)
WRITES = (items.writes, admin.writes)
