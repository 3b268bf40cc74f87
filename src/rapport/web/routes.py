"""Every router of the application, in one list: the one place to plug a new module in."""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    # Each module exposes ``router`` and, if it needs start-up work, ``setup(app)``.
    from rapport.web import health

    modules = [health]
    for module in modules:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
        app.include_router(module.router)
