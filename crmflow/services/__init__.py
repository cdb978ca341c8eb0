"""crmflow's service layer: one plain function per thing a user can do.

A service takes a `Runtime` (settings, the database engine, a Temporal client on demand) and
typed pydantic inputs, returns pydantic models and raises the typed errors of
`crmflow.services.errors`. It knows nothing of terminals, HTTP or HTML: the CLI, the API and
the console are thin faces over it, so the same call gives the same answer everywhere.
Nothing in here imports a face.
"""
