"""Every router of the application, in one list: the one place to plug a new module in."""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    # Each module exposes ``router`` and, if it needs start-up work, ``setup(app)``.
    from rapport.web import health

    from rapport.web import api_events, api_quarantine, api_sources, collector

    from rapport.web import api_users, assets, console

    modules = [health]
    modules += [assets, api_users, console]
    modules += [collector, api_sources, api_quarantine, api_events]
    from rapport.web import api_plan

    modules += [api_plan]
    from rapport.web import api_imports

    modules += [api_imports]
    for module in modules:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
        app.include_router(module.router)
