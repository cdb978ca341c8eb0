"""What workflows and activities pass each other, one module per workflow family: activity
names, workflow types, ids, signals, queries, and the pydantic models of their inputs and
results (`kpi`, `journeys`, `automations`, `projects`).

Workflows import these and nothing from `activities/` or `store/`, so both sides agree on
names and shapes without the workflow sandbox importing database code.
"""
