"""Scheduled automations: the schedules file, cron previews, and the pure parts of each
automation (tier reviews, the KPI digest report)."""
