"""The web UI: its own process (`python -m incl.web`), an aiohttp server whose pages and JSON API read and act
through `incl.bus.client.Client`, like the CLI, so that every rule the controller applies holds here too.

    config     every timeout, interval and bound, defaults in one place
    app        the application and its one lifespan (the bus client), and `serve`
    guard      refusing cross-site state changes and foreign Host headers
    errors     INCL errors and bad queries as JSON with an HTTP status
    listing    the jobs list: filter, sort, cursor pages (pure)
    snapshot   the jobs listing read from the controller, shared by requests for a moment
    api        the JSON routes under /api/
    metrics    series per metric, downsampled to min/max per bucket (pure)
    logtext    a job's log as the text a user downloads
    stream     a job's live events over server-sent events, with a bounded queue per client
    follow     following a job's log and metric subjects until it has ended
    openapi    the OpenAPI document of the API
    pages      the HTML pages and their static files
"""
