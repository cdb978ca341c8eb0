"""crmflow: journeys, loyalty rules and rollout projects for a membership / CRM programme."""

__version__ = "0.1.0"
