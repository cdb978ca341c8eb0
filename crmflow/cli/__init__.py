"""The `crmflow` command line (a face): thin commands over the service layer."""

from crmflow.cli.app import app

__all__ = ["app"]
