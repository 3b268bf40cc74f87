"""Every router of the application, in one list: the one place to plug a new module in."""

from __future__ import annotations

from fastapi import FastAPI

from rapport.web import errors


def mount(app: FastAPI) -> None:
    """Include each module's ``router`` after calling its optional ``setup(app)``.

    Order matters only for start-up hooks: the collector opens the log before the
    warehouse loader (``api_imports``) starts tailing it.
    """
    from rapport.web import (
        api_analytics,
        api_audit,
        api_campaigns,
        api_conditions,
        api_coupons,
        api_delivery,
        api_events,
        api_identity,
        api_imports,
        api_jobs,
        api_journeys,
        api_leads,
        api_personalize,
        api_persons,
        api_plan,
        api_quarantine,
        api_recommend,
        api_segments,
        api_sources,
        api_tags,
        api_tokens,
        api_users,
        assets,
        collector,
        console,
        health,
        track,
        unsubscribe,
    )
    from rapport.web import metrics as web_metrics
    from rapport.web.console import analytics as console_analytics
    from rapport.web.console import audit as console_audit
    from rapport.web.console import jobs as console_jobs
    from rapport.web.console import journeys as console_journeys
    from rapport.web.console import leads as console_leads
    from rapport.web.console import recommendations as console_recommendations

    modules = [health, assets, collector, api_sources, api_plan, api_imports]
    modules += [api_segments]
    modules += [api_tags]
    modules += [api_conditions]
    modules += [api_jobs, console_jobs]
    modules += [api_leads, console_leads]
    modules += [api_delivery, unsubscribe]
    modules += [api_personalize]
    modules += [api_campaigns, api_coupons, track]
    modules += [api_journeys, console_journeys]
    modules += [api_recommend, console_recommendations]
    modules += [api_analytics, console_analytics]
    modules += [api_events, api_quarantine, api_users, api_persons, api_identity, console]
    modules += [api_tokens, api_audit, console_audit]
    modules += [web_metrics]
    errors.install(app)
    for module in modules:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
        app.include_router(module.router, responses=errors.responses(module.router))
