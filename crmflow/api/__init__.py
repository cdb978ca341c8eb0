"""The HTTP API (a face over the service layer)."""

from crmflow.api.app import create_app

__all__ = ["create_app"]
