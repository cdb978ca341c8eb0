"""The rules language: file models, the compiler to durable_rules, and evaluation.

Facts in, effects out as data; never imports the store, activities or workflows.
"""
