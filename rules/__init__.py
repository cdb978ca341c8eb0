"""The rules language: file models, compiler to durable_rules, evaluation (facts in, effects out)."""
