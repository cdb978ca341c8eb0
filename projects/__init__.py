"""The rollout-project language: templates, plan arithmetic and health (pure logic)."""
